//! What the waiting room answers itself: the queue page, and the JSON status it polls
//! (`STATUS_PATH`) on the pingora path. The same status answered below pingora, on the
//! connection, is in `fast_status.rs`.

use std::sync::Arc;

use bytes::Bytes;
use pingora::prelude::*;
use pingora_http::RequestHeader;

use super::ctx::header;
use super::room::sealed_cookie;
use super::{hygiene, Ctx, EcluseProxy};
use crate::clock::now_ms;
use crate::config::Config;
use crate::pages::queue;
use crate::pages::{self, Problem};
use crate::policy::classes::cookie_in;
use crate::policy::ticket::{Ticket, TicketState};
use crate::policy::waiting_room::Standing;
use crate::waiting_room::Room;

/// The JSON status URL polled by the queue page.
pub const STATUS_PATH: &str = "/.ecluse/queue/status";

/// What a status poll's ticket asks.
pub(super) enum StatusPoll {
    /// An admitted session still alive.
    Admitted,
    /// A waiting ticket still polling: its standing decides.
    Waiting(Ticket),
    /// No usable ticket (none, forged, expired…).
    Lost,
}

/// The status poll's state, position and the cookie to set, from its ticket and (for a
/// waiting ticket) its standing in the room, at `now_s` (unix s).
pub(super) fn status_answer(
    room: &Room,
    poll: StatusPoll,
    standing: Option<Standing>,
    secure: bool,
    now_s: u64,
) -> (&'static str, Option<u64>, Option<String>) {
    match (poll, standing) {
        (StatusPoll::Admitted, _) => ("admitted", None, None),
        (StatusPoll::Waiting(t), Some(Standing::Admitted { bucket })) => {
            let t2 = Ticket {
                state: TicketState::Admitted,
                seen: now_s,
                bucket,
                ..t
            };
            ("admitted", None, Some(sealed_cookie(room, &t2, secure)))
        }
        (StatusPoll::Waiting(t), Some(Standing::Waiting { position })) => {
            // Polled again within the same second: the cookie would not change.
            let set = (t.seen != now_s).then(|| {
                let t2 = Ticket { seen: now_s, ..t };
                sealed_cookie(room, &t2, secure)
            });
            ("waiting", position, set)
        }
        _ => ("lost", None, None),
    }
}

/// What a status poll's answer reads of its request: pingora's header, or a head parsed
/// below pingora (`conn_guard::PollHead`).
pub(crate) trait PollRequest: hygiene::Head {
    fn path(&self) -> &str;
    fn query(&self) -> Option<&str>;
}

impl PollRequest for RequestHeader {
    fn path(&self) -> &str {
        self.uri.path()
    }
    fn query(&self) -> Option<&str> {
        self.uri.query()
    }
}

/// The first value of field `name` (what `HeaderMap::get` answers).
pub(super) fn first<'r>(req: &'r impl PollRequest, name: &http::HeaderName) -> Option<&'r [u8]> {
    req.values(name).next()
}

impl EcluseProxy {
    /// The status of this client's ticket, as JSON (polled by the queue page).
    pub(super) async fn queue_status(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        config: &Config,
    ) -> Result<()> {
        let secure = self.secure(session, ctx);
        let Some((room, params, poll)) =
            self.status_poll(session.req_header(), config, now_ms() / 1000)
        else {
            self.respond_problem(session, ctx, Problem::NoRoute, None, &[])
                .await?;
            return Ok(());
        };
        let standing = match &poll {
            StatusPoll::Waiting(t) => Some(
                self.poll_room(&room, &params, t.class, t.number, now_ms())
                    .await,
            ),
            _ => None,
        };
        let (state, position, set) = status_answer(&room, poll, standing, secure, now_ms() / 1000);
        ctx.room_decision = Some("status");
        crate::metrics::get()
            .status_polls
            .with_label_values(&["http"])
            .inc();
        self.respond_queue_json(session, ctx, &room, state, position, set)
            .await
    }

    /// A status poll at `now_s` (unix s): which room, its params for this node, and what
    /// its ticket asks (`None`: no such room).
    pub(super) fn status_poll(
        &self,
        req: &impl PollRequest,
        config: &Config,
        now_s: u64,
    ) -> Option<(
        Arc<Room>,
        crate::policy::waiting_room::RoomParams,
        StatusPoll,
    )> {
        let q = req.query().unwrap_or("");
        let name = q
            .split('&')
            .find_map(|kv| kv.strip_prefix("room="))
            .unwrap_or("");
        let room = config.rooms.iter().find(|r| r.name == name).cloned()?;
        let params = self.room_params(&room);
        let ticket = cookie_in(req.values(&http::header::COOKIE), &room.cookie_name)
            .and_then(|v| room.keys.open(v, &room.name).ok());
        let poll = match ticket {
            Some(t)
                if t.state == TicketState::Admitted
                    && now_s.saturating_sub(t.seen) <= params.idle_timeout.as_secs() =>
            {
                StatusPoll::Admitted
            }
            Some(t)
                if t.state == TicketState::Waiting
                    && now_s.saturating_sub(t.seen)
                        <= params.waiting_ticket_lifetime().as_secs() =>
            {
                StatusPoll::Waiting(t)
            }
            _ => StatusPoll::Lost,
        };
        Some((room, params, poll))
    }

    /// The JSON status at `now` (unix ms); `params` the room's, for its poll interval and
    /// opening.
    pub(super) fn status_of<'r>(
        &self,
        req: &impl PollRequest,
        room: &'r Room,
        params: &crate::policy::waiting_room::RoomParams,
        state: &'static str,
        position: Option<u64>,
        now: u64,
    ) -> (pages::Lang, queue::Status<'r>, u64) {
        let lang = pages::negotiate_lang(first(req, &http::header::ACCEPT_LANGUAGE));
        let (wait, paused) = match self.fleet_room(room) {
            Some((fr, _)) => (position.and_then(|p| fr.wait(params, p, now)), fr.paused()),
            None => {
                let s = room.shared.lock();
                (position.and_then(|p| s.wait(params, p, now)), s.paused)
            }
        };
        let eta = wait.map(|w| w.estimate);
        // ±20% jitter so that a crowd that arrived together does not poll together.
        let base = params.poll_interval.as_millis() as u64;
        let jitter = (base / 5).max(1);
        let mut poll_after = base - jitter + rand::random::<u64>() % (2 * jitter);
        // Near the front: ask again about when the turn should come (at least 1 s apart),
        // so an admission is not left unclaimed for most of a poll interval while it
        // holds a place in the room.
        if let Some(eta) = eta.filter(|e| (e.as_millis() as u64) < poll_after) {
            // (`clamp` panics when its floor is above its ceiling: a poll interval under
            // a second keeps its own pace.)
            poll_after = (eta.as_millis() as u64 + 250).clamp(1000.min(poll_after), poll_after);
        }
        let zone = &room.pages.zone;
        let opens = params.opens_at.filter(|t| *t > now);
        let status = queue::Status {
            room: &room.name,
            state,
            position,
            position_text: queue::position_text(lang, position),
            eta_seconds: eta.map(|d| d.as_secs()),
            eta_low_seconds: wait.map(|w| w.low.as_secs()),
            eta_high_seconds: wait.map(|w| w.high.as_secs_f64().ceil() as u64),
            eta_text: queue::wait_text(lang, wait),
            updated_at: zone.rfc3339(now),
            updated_at_text: zone.clock(now),
            poll_after_ms: poll_after,
            pace_adaptive: room.auto.is_some_and(|a| a.pace || a.capacity),
            paused,
            opens_at: opens.map(|t| zone.rfc3339(t)),
            opens_at_text: opens.map(|t| zone.when(t, now, lang)),
            request_id: String::new(),
        };
        (lang, status, base)
    }

    async fn respond_queue_json(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        room: &Room,
        state: &'static str,
        position: Option<u64>,
        set_cookie: Option<String>,
    ) -> Result<()> {
        let (_, mut status, _) = self.status_of(
            session.req_header(),
            room,
            &room.effective(),
            state,
            position,
            now_ms(),
        );
        status.request_id = ctx.request_id.clone();
        let body = Bytes::from(serde_json::to_vec(&status).unwrap_or_default());
        self.respond_raw(session, ctx, 200, "application/json", body, set_cookie)
            .await
    }

    pub(super) async fn respond_queue(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        room: &Room,
        state: &'static str,
        position: Option<u64>,
        set_cookie: Option<String>,
    ) -> Result<()> {
        if pages::wants_json(header(session.req_header(), "accept")) {
            return self
                .respond_queue_json(session, ctx, room, state, position, set_cookie)
                .await;
        }
        let params = room.effective();
        let now = now_ms();
        let (lang, status, poll_ms) =
            self.status_of(session.req_header(), room, &params, state, position, now);
        let before_opening = params.opens_at.filter(|t| *t > now);
        let draw = params.method == crate::policy::waiting_room::Method::Random;
        let html = match before_opening {
            // Before the pre-queue window: nobody holds a place, so no position.
            Some(opens) if state == "closed" => {
                let window = opens.saturating_sub(params.prequeue.as_millis() as u64);
                let view = queue::NotOpenView {
                    lang,
                    opens_at: room.pages.zone.when(opens, now, lang),
                    window_at: room.pages.zone.when(window, now, lang),
                    // Back when the window opens; at most every 5 minutes meanwhile
                    // (a changed opening time is seen), at least 5 s apart.
                    reload_in: (window.saturating_sub(now) / 1000).clamp(5, 300),
                    draw,
                };
                room.pages.render_not_open(
                    &view,
                    (!ctx.request_id.is_empty()).then_some(ctx.request_id.as_str()),
                )
            }
            _ => {
                let view = queue::QueueView {
                    lang,
                    position,
                    position_text: status.position_text,
                    eta_text: status.eta_text,
                    updated_at: status.updated_at_text,
                    poll_ms,
                    refresh_s: (poll_ms / 1000).max(5),
                    status_url: format!("{STATUS_PATH}?room={}", room.name),
                    room: room.name.clone(),
                    paused: status.paused,
                    opens_at: status.opens_at_text.unwrap_or_default(),
                    phase: if before_opening.is_some() {
                        "prequeue"
                    } else {
                        "waiting"
                    },
                    draw,
                    sound: room.turn_sound,
                };
                room.pages.render_queue(
                    &view,
                    (!ctx.request_id.is_empty()).then_some(ctx.request_id.as_str()),
                )
            }
        };
        let body = Bytes::from(html);
        self.respond_raw(
            session,
            ctx,
            200,
            "text/html; charset=utf-8",
            body,
            set_cookie,
        )
        .await
    }
}
