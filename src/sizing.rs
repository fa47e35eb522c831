//! The `auto` rooms' step, about once a second (`server.rs` runs it): which origins each
//! room guards, read from the config, handed to the room as plain measures. Kept out of
//! `waiting_room.rs` so the rooms do not import the config that holds them.

use std::sync::Arc;

use crate::config::runtime::Origin;
use crate::waiting_room::Guarded;

/// Step every `auto` room of `cfg` against the origins it guards: those of the routes that
/// name it (a room whose routes go to several origins is as large as the most loaded of
/// them allows; an origin it does not guard never moves it).
pub fn size_all(cfg: &crate::config::Config, now: u64) {
    for room in cfg.rooms.iter().filter(|r| r.auto.is_some()) {
        let mut origins: Vec<Arc<Origin>> = Vec::new();
        for r in cfg.router.routes() {
            let guards = r.room.as_ref().is_some_and(|x| x.name == room.name);
            if guards && !origins.iter().any(|o| o.name == r.origin.name) {
                origins.push(r.origin.clone());
            }
        }
        let guarded: Vec<Guarded<'_>> = origins
            .iter()
            .map(|o| Guarded {
                name: o.name.as_str(),
                tolerance: o.adaptive.as_ref().map(|a| a.tolerance),
                max_inflight: o.max_inflight,
                shared: &o.shared,
            })
            .collect();
        room.size(&guarded, now);
    }
}
