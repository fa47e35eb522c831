//! `waiting_rooms`: each room's parameters, its `auto` sizing, and the live room it
//! keeps across reloads.

use std::sync::Arc;
use std::time::Duration;

use super::context::{duration_or, valid_name, BuildContext, Problems};
use super::paths::{check_prefix, paths_of, policy_key_of};
use crate::clock::parse_rfc3339_ms;
use crate::config::file::FileConfig;
use crate::config::tree::Seg;
use crate::config::units::parse_duration;
use crate::path;
use crate::policy::classes::PriorityClass;
use crate::policy::rate_limit::{KeyedLimiter, Rate};
use crate::policy::ticket::Keyring;
use crate::policy::waiting_room::{ClassPolicy, Method, RoomParams};
use crate::waiting_room::{Room, RoomMetrics};

/// The ticket keys used when `check --skip-secrets` finds none (see [`stand_in_token`]).
fn stand_in_keys(path: Vec<Seg>) -> (String, Vec<Seg>, String) {
    (
        format!("check:{}", "0".repeat(64)),
        path,
        "a stand-in (secrets skipped)".to_string(),
    )
}

/// The `auto` sizing of a room, when `active_users` or `new_users_per_minute` is `auto`;
/// its bounds checked. Refused in fleet mode: each node measures only its own share of
/// the origin's traffic, and the shared room takes one capacity (see
/// `docs/room-sizing.md`).
fn build_room_auto(
    p: &mut Problems,
    file: &FileConfig,
    w: &super::file::WaitingRoomFile,
    at: &dyn Fn(Vec<Seg>) -> Vec<Seg>,
) -> Option<crate::waiting_room::RoomAuto> {
    use super::file::CountOrAuto;
    use crate::policy::room_sizing::Bounds;
    let capacity = matches!(w.active_users, CountOrAuto::Auto(_));
    let pace = matches!(w.new_users_per_minute, CountOrAuto::Auto(_));
    if !capacity && !pace {
        if w.auto.is_some() {
            p.at(
                at(path!["auto"]),
                "bounds of `auto` numbers, but neither `active_users` nor `new_users_per_minute` is `auto`",
            );
        }
        return None;
    }
    if file.cluster.is_some() {
        let key = if capacity {
            "active_users"
        } else {
            "new_users_per_minute"
        };
        p.at(
            at(path![key]),
            "`auto` is not available in fleet mode (`cluster`): each node measures only its share of the origin; give fixed numbers",
        );
        return None;
    }
    let a = w.auto.clone().unwrap_or_default();
    let mut bounds =
        |lo: Option<u32>, hi: Option<u32>, lo_key: &'static str, hi_key: &'static str| {
            let min = lo.unwrap_or(crate::waiting_room::AUTO_MIN);
            let max = hi.unwrap_or(crate::waiting_room::AUTO_MAX);
            if min == 0 {
                p.at(at(path!["auto", lo_key]), "must be at least 1");
            }
            if max < min.max(1) {
                p.at(
                    at(path!["auto", hi_key]),
                    format!("must be at least `{lo_key}` ({min})"),
                );
            }
            Bounds {
                min: min.max(1),
                max: max.max(min).max(1),
            }
        };
    let cap = bounds(
        a.min_active_users,
        a.max_active_users,
        "min_active_users",
        "max_active_users",
    );
    let pc = bounds(
        a.min_new_users_per_minute,
        a.max_new_users_per_minute,
        "min_new_users_per_minute",
        "max_new_users_per_minute",
    );
    // Bounds of a number that is fixed say nothing: a mistake worth telling.
    for (auto_on, keys, name) in [
        (
            capacity,
            [&a.min_active_users, &a.max_active_users],
            "active_users",
        ),
        (
            pace,
            [&a.min_new_users_per_minute, &a.max_new_users_per_minute],
            "new_users_per_minute",
        ),
    ] {
        if !auto_on && keys.iter().any(|k| k.is_some()) {
            p.at(
                at(path!["auto"]),
                format!("bounds for `{name}`, which is a fixed number, not `auto`"),
            );
        }
    }
    Some(crate::waiting_room::RoomAuto {
        capacity,
        pace,
        bounds: crate::waiting_room::AutoBounds {
            capacity: cap,
            pace: pc,
        },
    })
}

pub(super) fn build_rooms(
    p: &mut Problems,
    file: &FileConfig,
    classes: &[PriorityClass],
    ctx: &BuildContext,
    pages: &crate::pages::Pages,
) -> Vec<Arc<Room>> {
    let mut out = Vec::new();
    for (name, w) in &file.waiting_rooms {
        let at = |extra: Vec<Seg>| {
            let mut v = path!["waiting_rooms", name.as_str()];
            v.extend(extra);
            v
        };
        let before = p.list.len();
        if !valid_name(name) {
            p.at_key(at(vec![]), "room names use letters, digits, `_` and `-`");
        }
        use super::file::CountOrAuto;
        if w.active_users == CountOrAuto::Count(0) {
            p.at(at(path!["active_users"]), "must be at least 1 (or `auto`)");
        }
        if w.new_users_per_minute == CountOrAuto::Count(0) {
            p.at(
                at(path!["new_users_per_minute"]),
                "must be at least 1 (or `auto`)",
            );
        }
        let auto = build_room_auto(p, file, w, &at);
        // Keys: from a file or an environment variable, never inline.
        let keys_text = match (&w.secret_file, &w.secret_env) {
            (Some(_), Some(_)) => {
                p.at(
                    at(path!["secret_env"]),
                    "give `secret_file` or `secret_env`, not both",
                );
                None
            }
            (None, None) => {
                p.at(
                    at(vec![]),
                    "needs `secret_file` (or `secret_env`): the keys that sign students' places",
                );
                None
            }
            (Some(f), None) => {
                let full = ctx.base_dir.join(f);
                match std::fs::read_to_string(&full) {
                    Ok(t) => Some((t, path!["secret_file"], full.display().to_string())),
                    Err(e) => p
                        .missing_secret(
                            at(path!["secret_file"]),
                            format!("cannot read `{}`: {e}", full.display()),
                        )
                        .then(|| stand_in_keys(path!["secret_file"])),
                }
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(t) => Some((t, path!["secret_env"], format!("${var}"))),
                Err(_) => p
                    .missing_secret(
                        at(path!["secret_env"]),
                        format!("environment variable `{var}` is not set"),
                    )
                    .then(|| stand_in_keys(path!["secret_env"])),
            },
        };
        let keys = keys_text.and_then(|(text, kpath, from)| match Keyring::parse(&text) {
            Ok(k) => Some(k),
            Err(e) => {
                p.at(at(kpath), format!("keys in {from}: {e}"));
                None
            }
        });
        let d = |p: &mut Problems, v: &Option<super::file::DurationText>, def: u64, key: &str| {
            duration_or(p, v, Duration::from_secs(def), at(path![key]))
        };
        let idle = d(p, &w.session_idle_timeout, 1200, "session_idle_timeout");
        let abandon = d(p, &w.abandon_timeout, 120, "abandon_timeout");
        // `0s` is allowed here: it turns the return grace off (a ticket is lost at
        // `abandon_timeout`, as before the grace existed).
        let return_grace = match &w.return_grace {
            None => Duration::from_secs(900),
            Some(t) => parse_duration(&t.0).unwrap_or_else(|e| {
                p.at(at(path!["return_grace"]), e);
                Duration::from_secs(900)
            }),
        };
        let poll = d(p, &w.poll_interval, 10, "poll_interval");
        if poll * 2 > abandon {
            p.at(
                at(path!["abandon_timeout"]),
                format!("must be at least twice `poll_interval` ({poll:?}), or students lose their place between two polls"),
            );
        }
        let mut room_classes = vec![ClassPolicy::Default];
        let mut class_map = vec![0u8; classes.len()];
        for (cname, c) in &w.classes {
            let cat = at(path!["classes", cname.as_str()]);
            let policy = match (c.bypass, c.share) {
                (Some(true), None) => Some(ClassPolicy::Bypass),
                (None | Some(false), Some(s)) if s > 0.0 && s < 1.0 => Some(ClassPolicy::Share(s)),
                (None | Some(false), Some(s)) => {
                    p.at(
                        cat.clone(),
                        format!("share {s} must be between 0 and 1 (e.g. 0.2)"),
                    );
                    None
                }
                _ => {
                    p.at(cat.clone(), "give either `bypass: true` or `share: 0.2`");
                    None
                }
            };
            match classes.iter().position(|x| &x.name == cname) {
                Some(i) => {
                    if let Some(pol) = policy {
                        room_classes.push(pol);
                        class_map[i] = (room_classes.len() - 1) as u8;
                    }
                }
                None => {
                    let hint = crate::config::schema_check::did_you_mean(
                        cname,
                        classes.iter().map(|x| x.name.as_str()),
                    )
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                    p.at_key(cat, format!("priority class `{cname}` is not defined under `priority_classes`{hint}"));
                }
            }
        }
        let total_share: f64 = room_classes
            .iter()
            .map(|c| {
                if let ClassPolicy::Share(s) = c {
                    *s
                } else {
                    0.0
                }
            })
            .sum();
        if total_share >= 1.0 {
            p.at(
                at(path!["classes"]),
                "the shares add up to 1 or more: the default queue would never move",
            );
        }
        let (opens_at, prequeue) = match &w.event {
            None => (None, Duration::ZERO),
            Some(ev) => {
                // With its time zone (`+01:00` or `Z`): a bare 08:00 is ambiguous.
                let t = match parse_rfc3339_ms(&ev.opens_at) {
                    Ok(ms) => Some(ms),
                    Err(e) => {
                        p.at(at(path!["event", "opens_at"]), e);
                        None
                    }
                };
                let pq = duration_or(
                    p,
                    &ev.prequeue,
                    Duration::from_secs(1800),
                    at(path!["event", "prequeue"]),
                );
                (t, pq)
            }
        };
        let mut inside = Vec::new();
        let paths = paths_of(file);
        for (k, ip) in w.inside_paths.iter().flatten().enumerate() {
            if check_prefix(p, at(path!["inside_paths", k]), ip, &paths) {
                // Compared with the request's policy path (case folded…).
                inside.push(policy_key_of(ip));
            }
        }
        let ticket_rate = match Rate::parse(w.ticket_rate.as_deref().unwrap_or("60/min")) {
            Ok(r) => Some(r),
            Err(e) => {
                p.at(at(path!["ticket_rate"]), e);
                None
            }
        };
        let ticket_burst = std::num::NonZeroU32::new(w.ticket_burst.unwrap_or(120));
        if ticket_burst.is_none() {
            p.at(at(path!["ticket_burst"]), "must be at least 1");
        }
        // The room's pages: its own queue template and name over the config's.
        let queue_source = match &w.template_file {
            None => Some(None),
            Some(f) => {
                let full = ctx.base_dir.join(f);
                match std::fs::read_to_string(&full) {
                    Ok(t) => Some(Some(t)),
                    Err(e) => {
                        p.at(
                            at(path!["template_file"]),
                            format!("cannot read `{}`: {e}", full.display()),
                        );
                        None
                    }
                }
            }
        };
        let template =
            queue_source.and_then(
                |src| match pages.for_room(src.as_deref(), w.brand.as_deref()) {
                    Ok(room_pages) => Some(Arc::new(room_pages)),
                    Err(e) => {
                        let file = w.template_file.as_deref().unwrap_or("");
                        p.at(
                            at(path!["template_file"]),
                            format!(
                                "template `{}`: {}",
                                ctx.base_dir.join(file).display(),
                                e.message
                            ),
                        );
                        None
                    }
                },
            );
        let end_header = match http::HeaderName::from_bytes(
            w.end_session_header
                .as_deref()
                .unwrap_or("x-ecluse-end-session")
                .as_bytes(),
        ) {
            Ok(h) => Some(h),
            Err(_) => {
                p.at(at(path!["end_session_header"]), "is not a header name");
                None
            }
        };
        if p.list.len() > before {
            continue;
        }
        let (Some(keys), Some(ticket_rate), Some(ticket_burst), Some(end_header), Some(template)) =
            (keys, ticket_rate, ticket_burst, end_header, template)
        else {
            continue;
        };
        // An automatic number starts at its lower bound (the sizer moves it from there).
        let fixed_or_min = |n: CountOrAuto, min: u32| match n {
            CountOrAuto::Count(n) => n,
            CountOrAuto::Auto(_) => min,
        };
        let params = RoomParams {
            active_users: fixed_or_min(
                w.active_users,
                auto.as_ref().map_or(1, |a| a.bounds.capacity.min),
            ),
            new_users_per_minute: fixed_or_min(
                w.new_users_per_minute,
                auto.as_ref().map_or(1, |a| a.bounds.pace.min),
            ),
            idle_timeout: idle,
            abandon_timeout: abandon,
            return_grace,
            poll_interval: poll,
            classes: room_classes,
            method: match w.method.unwrap_or_default() {
                super::file::QueueMethodFile::Fifo => Method::Fifo,
                super::file::QueueMethodFile::Random => Method::Random,
            },
            opens_at,
            prequeue,
            fleet: None,
            shuffle_key: keys.derive_u64(&format!("prequeue|{name}|{}", opens_at.unwrap_or(0))),
        };
        let identity = keys.fingerprints(&format!("room-identity|{name}"));
        let shared = ctx.registry.rooms.get(name, &params, &identity);
        let fp = format!("{ticket_rate:?}|{ticket_burst}");
        let ticket_limiter =
            ctx.registry
                .limiters
                .get_or_new(&format!("room:{name}"), "tickets", &fp, || {
                    KeyedLimiter::new(
                        ticket_rate,
                        ticket_burst,
                        100_000,
                        governor::clock::QuantaClock::default(),
                    )
                });
        if let Some(a) = &auto {
            crate::waiting_room::touch_auto_series(name, a);
        }
        out.push(Arc::new(Room {
            name: name.clone(),
            cookie_name: format!("ecluse_{name}"),
            params,
            keys,
            shared,
            inside,
            class_map,
            ticket_limiter,
            ticket_fingerprint: fp,
            pages: template,
            turn_sound: w.turn_sound.unwrap_or(false),
            end_header,
            metrics: RoomMetrics::new(name),
            auto,
        }));
    }
    out
}
