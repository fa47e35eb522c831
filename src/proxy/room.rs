//! Step 4 of the request path, the waiting room: a request without a valid admission is
//! queued. The room protocol, local (`waiting_room::Room`) or fleet-wide
//! (`cluster::fleet_room`, with this node alone when Redis is away), and the room cookie.

use std::sync::Arc;

use pingora::prelude::*;

use super::ctx::{header, policy_path};
use super::{Ctx, EcluseProxy};
use crate::clock::now_ms;
use crate::policy::classes::cookie;
use crate::policy::rate_limit::aggregate_ip;
use crate::policy::ticket::{Ticket, TicketError, TicketState};
use crate::policy::waiting_room::{Arrival, Standing};
use crate::waiting_room::Room;

fn cookie_header(room: &Room, value: &str, secure: bool) -> String {
    cookie_with(room, secure, |out| out.push_str(value))
}

/// [`cookie_header`] for ticket `t`, sealed straight into it.
pub(super) fn sealed_cookie(room: &Room, t: &Ticket, secure: bool) -> String {
    cookie_with(room, secure, |out| room.keys.seal_into(t, out))
}

/// `NAME=VALUE; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax[; Secure]`, `value` writing
/// the value.
fn cookie_with(room: &Room, secure: bool, value: impl FnOnce(&mut String)) -> String {
    let mut out = String::with_capacity(room.cookie_name.len() + 256);
    out.push_str(&room.cookie_name);
    out.push('=');
    value(&mut out);
    out.push_str("; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax");
    if secure {
        out.push_str("; Secure");
    }
    out
}

impl EcluseProxy {
    pub(super) fn secure(&self, session: &Session, ctx: &Ctx) -> bool {
        if self.tls {
            return true;
        }
        let trusted = match (ctx.peer_ip, ctx.config.as_ref()) {
            (Some(ip), Some(c)) => c.server.is_trusted(ip),
            _ => false,
        };
        trusted
            && header(session.req_header(), "x-forwarded-proto")
                .is_some_and(|p| p.eq_ignore_ascii_case(b"https"))
    }

    /// Queue or admit a request on a route guarded by `room`. Returns true when the
    /// request was answered here (queue page or status).
    /// Fleet mode with Redis answering: the shared room and a connection to reach it.
    pub(super) fn fleet_room(
        &self,
        room: &Room,
    ) -> Option<(
        Arc<crate::cluster::fleet_room::FleetRoom>,
        crate::cluster::redis_conn::RedisConn,
    )> {
        let f = self.app.fleet.as_ref()?;
        let conn = f.conn()?;
        Some((f.room(&room.name), conn))
    }

    /// Fleet mode with Redis unreachable: the shared room, for what this node does alone
    /// to reach the fleet once Redis is back.
    pub(super) fn fleet_room_alone(
        &self,
        room: &Room,
    ) -> Option<Arc<crate::cluster::fleet_room::FleetRoom>> {
        let f = self.app.fleet.as_ref()?;
        f.conn().is_none().then(|| f.room(&room.name))
    }

    /// The room's params for this node (its share while fleet mode is in fallback).
    pub(super) fn room_params(&self, room: &Room) -> crate::policy::waiting_room::RoomParams {
        room.effective_share(self.app.fleet.as_ref().and_then(|f| f.fallback_share()))
    }

    /// A waiting ticket polls: through the shared room in fleet mode (falling back to
    /// the local one if Redis fails now), else the local room.
    pub(super) async fn poll_room(
        &self,
        room: &Room,
        params: &crate::policy::waiting_room::RoomParams,
        class: u8,
        number: u64,
        now: u64,
    ) -> Standing {
        if let Some((fr, mut conn)) = self.fleet_room(room) {
            match fr
                .poll(&mut conn, params, usize::from(class), number, now)
                .await
            {
                Ok((s, asked)) => {
                    if asked {
                        if let Some(f) = &self.app.fleet {
                            f.count_commands(1);
                        }
                    }
                    return s;
                }
                Err(e) => {
                    if let Some(f) = &self.app.fleet {
                        f.call_failed(&e);
                    }
                }
            }
        }
        // Redis may have failed just now: the node's own room decides, with this node's
        // share (the params were read while Redis answered: with the whole room, they
        // would let in the fleet's capacity on this node alone).
        let alone = self.room_params(room);
        let params = if self.fleet_room_alone(room).is_some() {
            &alone
        } else {
            params
        };
        let standing = room
            .shared
            .lock()
            .poll(params, usize::from(class), number, now);
        if let Some(fr) = self.fleet_room_alone(room) {
            fr.mark_diverged();
            if let Standing::Admitted { bucket } = standing {
                fr.record_outage_admission(bucket, Some((class, number)));
            }
        }
        standing
    }

    pub(super) async fn waiting_room(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        room: &Arc<Room>,
    ) -> Result<bool> {
        if !room.is_inside(policy_path(ctx, session.req_header())) {
            return Ok(false);
        }
        let now = now_ms();
        let now_s = now / 1000;
        let params = self.room_params(room);
        let secure = self.secure(session, ctx);
        ctx.room_secure = secure;
        let ticket = match cookie(&session.req_header().headers, &room.cookie_name) {
            None => None,
            Some(v) => match room.keys.open(v, &room.name) {
                Ok(t) => Some(t),
                Err(TicketError::OtherRoom(_)) => {
                    room.metrics.rejected_other_room.inc();
                    None
                }
                Err(_) => {
                    room.metrics.rejected_forged.inc();
                    None
                }
            },
        };
        if let Some(t) = ticket {
            match t.state {
                TicketState::Admitted
                    if now_s.saturating_sub(t.seen) <= params.idle_timeout.as_secs() =>
                {
                    let touched = match self.fleet_room(room) {
                        Some((fr, _)) => fr.touch(&params, t.class, t.number, t.bucket, now),
                        None => {
                            // Redis away: the move also waits for the fleet's count.
                            let fleet_ok = self.fleet_room_alone(room).is_none_or(|fr| {
                                fr.mark_diverged();
                                fr.touch(&params, t.class, t.number, t.bucket, now)
                                    .is_some()
                            });
                            let local = room
                                .shared
                                .lock()
                                .touch(&params, t.class, t.number, t.bucket, now);
                            local.filter(|_| fleet_ok)
                        }
                    };
                    let Some(bucket) = touched else {
                        // Ended, or a stale copy: queue fresh like any newcomer.
                        room.metrics.rejected_expired.inc();
                        return self
                            .newcomer(session, ctx, room, &params, now, secure)
                            .await;
                    };
                    let t2 = Ticket {
                        seen: if bucket != t.bucket { now_s } else { t.seen },
                        bucket,
                        ..t
                    };
                    if bucket != t.bucket {
                        ctx.set_cookie = Some(cookie_header(room, &room.keys.seal(&t2), secure));
                    }
                    ctx.room_session = Some((room.clone(), bucket, t2));
                    ctx.room_decision = Some("inside");
                    return Ok(false);
                }
                TicketState::Waiting
                    if now_s.saturating_sub(t.seen)
                        <= params.waiting_ticket_lifetime().as_secs() =>
                {
                    let standing = self.poll_room(room, &params, t.class, t.number, now).await;
                    match standing {
                        Standing::Admitted { bucket } => {
                            let t2 = Ticket {
                                state: TicketState::Admitted,
                                seen: now_s,
                                bucket,
                                ..t
                            };
                            ctx.set_cookie =
                                Some(cookie_header(room, &room.keys.seal(&t2), secure));
                            ctx.room_session = Some((room.clone(), bucket, t2));
                            ctx.room_decision = Some("admitted");
                            return Ok(false);
                        }
                        Standing::Waiting { position } => {
                            let t2 = Ticket { seen: now_s, ..t };
                            let c = cookie_header(room, &room.keys.seal(&t2), secure);
                            ctx.room_decision = Some("queued");
                            self.respond_queue(session, ctx, room, "waiting", position, Some(c))
                                .await?;
                            return Ok(true);
                        }
                        Standing::Used => room.metrics.rejected_reused.inc(),
                    }
                }
                _ => room.metrics.rejected_expired.inc(),
            }
        }
        self.newcomer(session, ctx, room, &params, now, secure)
            .await
    }

    /// A request without a usable ticket: admit at once when there is room and nobody
    /// waits, else hand out a place at the back of the queue.
    async fn newcomer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        room: &Arc<Room>,
        params: &crate::policy::waiting_room::RoomParams,
        now: u64,
        secure: bool,
    ) -> Result<bool> {
        let now_s = now / 1000;
        let params = params.clone();
        let class = self
            .class_of(session, ctx)
            .and_then(|c| room.class_map.get(c).copied())
            .unwrap_or(0);
        let fleet = self.fleet_room(room);
        let would_queue = match &fleet {
            Some((fr, _)) => fr.would_queue(&params, usize::from(class), now),
            None => room
                .shared
                .lock()
                .would_queue(&params, usize::from(class), now),
        };
        if would_queue {
            // Bots that drop cookies get a new ticket on every request: cap the tickets
            // handed to one address (NAT-friendly default), without one the page
            // just reloads until a place can be given.
            let agg = ctx
                .client_ip
                .map(|ip| aggregate_ip(ip, 32, 64))
                .unwrap_or([0u8; 17]);
            let key = room.ticket_limiter.key_hash_tagged(b't', &agg);
            if !room.ticket_limiter.check(key, 1.0).allowed {
                ctx.room_decision = Some("ticket_refused");
                self.respond_queue(session, ctx, room, "waiting", None, None)
                    .await?;
                return Ok(true);
            }
        }
        let mut fleet_position = None;
        let mut arrival = None;
        if let Some((fr, mut conn)) = fleet {
            if let Some(f) = &self.app.fleet {
                f.count_commands(1);
            }
            match fr.arrive(&mut conn, &params, usize::from(class), now).await {
                Ok(crate::cluster::fleet_room::Arrived::Admit { number, bucket }) => {
                    arrival = Some(Arrival::Admit { number, bucket })
                }
                Ok(crate::cluster::fleet_room::Arrived::Queue { number, position }) => {
                    fleet_position = Some(position);
                    arrival = Some(Arrival::Queue { number });
                }
                Ok(crate::cluster::fleet_room::Arrived::Closed) => arrival = Some(Arrival::Closed),
                Err(e) => {
                    if let Some(f) = &self.app.fleet {
                        f.call_failed(&e);
                    }
                }
            }
        }
        let arrival = match arrival {
            Some(a) => a,
            None => {
                // Redis may have failed just now: number as the node alone does (its
                // share, its own numbers), not with the params read while it answered
                // (every node would hand out the same next numbers).
                let params = self.room_params(room);
                let a = room.arrive_local(&params, usize::from(class), now);
                if let Some(fr) = self.fleet_room_alone(room) {
                    fr.mark_diverged();
                    if let Arrival::Admit { number, .. } | Arrival::Queue { number } = a {
                        fr.note_alone(usize::from(class), number);
                    }
                    if let Arrival::Admit { bucket, .. } = a {
                        fr.record_outage_admission(bucket, None);
                    }
                }
                a
            }
        };
        match arrival {
            Arrival::Admit { number, bucket } => {
                let t = Ticket {
                    room: room.name.clone(),
                    class,
                    state: TicketState::Admitted,
                    number,
                    issued: now_s,
                    seen: now_s,
                    bucket,
                };
                ctx.set_cookie = Some(cookie_header(room, &room.keys.seal(&t), secure));
                ctx.room_session = Some((room.clone(), bucket, t));
                ctx.room_decision = Some("direct");
                Ok(false)
            }
            Arrival::Queue { number } => {
                let t = Ticket {
                    room: room.name.clone(),
                    class,
                    state: TicketState::Waiting,
                    number,
                    issued: now_s,
                    seen: now_s,
                    bucket: 0,
                };
                let position = fleet_position.unwrap_or_else(|| {
                    let s = room.shared.lock();
                    s.effective_number(&params, usize::from(class), number)
                        .map(|n| {
                            n.saturating_sub(
                                s.queues
                                    .get(usize::from(class))
                                    .map(|q| q.frontier)
                                    .unwrap_or(0),
                            )
                            .max(1)
                        })
                });
                let c = cookie_header(room, &room.keys.seal(&t), secure);
                ctx.room_decision = Some("queued");
                self.respond_queue(session, ctx, room, "waiting", position, Some(c))
                    .await?;
                Ok(true)
            }
            Arrival::Closed => {
                ctx.room_decision = Some("closed");
                self.respond_queue(session, ctx, room, "closed", None, None)
                    .await?;
                Ok(true)
            }
        }
    }
}
