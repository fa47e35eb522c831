//! `waiting_rooms`: queue order, classes, events, `auto` sizing.

use super::text::DurationText;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Queue order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueueMethodFile {
    /// First come, first served.
    #[default]
    Fifo,
    /// Students who arrive before a scheduled opening are shuffled at the opening (a
    /// fair lottery, so refreshing at 07:59:59 gains nothing); later arrivals are FIFO.
    Random,
}

/// How a priority class goes through a room.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomClassFile {
    /// Never queued (still counted as active users).
    #[serde(default)]
    pub bypass: Option<bool>,
    /// Share of each admission round reserved for this class while it has people
    /// waiting, between 0 and 1 (e.g. 0.2).
    #[serde(default)]
    pub share: Option<f64>,
}

/// A scheduled opening (a mock exam at 08:00).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventFile {
    /// When admission starts, RFC 3339 (`2026-03-16T08:00:00+01:00`).
    pub opens_at: String,
    /// How long before the opening places are handed out (default `30m`). Earlier
    /// visitors see when it opens, without a place.
    #[serde(default)]
    pub prequeue: Option<DurationText>,
}

/// A fixed number, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CountOrAuto {
    /// A fixed number.
    Count(u32),
    /// `auto`: from what the guarded origin measures.
    Auto(AutoWord),
}

/// The word `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AutoWord {
    Auto,
}

/// Bounds of a room sized automatically (`active_users: auto`, `new_users_per_minute:
/// auto`): the room starts at the lower bounds and never leaves them.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomAutoFile {
    /// Fewest sessions inside the room lets in, whatever the origin says (default 10).
    #[serde(default)]
    pub min_active_users: Option<u32>,
    /// Most sessions inside (default 1000000).
    #[serde(default)]
    pub max_active_users: Option<u32>,
    /// Slowest pace of admissions per minute (default 10).
    #[serde(default)]
    pub min_new_users_per_minute: Option<u32>,
    /// Fastest pace of admissions per minute (default 1000000).
    #[serde(default)]
    pub max_new_users_per_minute: Option<u32>,
}

/// A waiting room: students beyond capacity wait on a queue page, in order.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitingRoomFile {
    /// Most sessions inside at once (active within `session_idle_timeout`), or `auto`:
    /// sized from the guarded origin's measures (see `docs/room-sizing.md`).
    pub active_users: CountOrAuto,
    /// Most new sessions let in per minute, or `auto`: paced from the guarded origin's
    /// measures.
    pub new_users_per_minute: CountOrAuto,
    /// Bounds of the `auto` numbers (each optional).
    #[serde(default)]
    pub auto: Option<RoomAutoFile>,
    /// File holding the ticket signing keys, one `KID:SECRET` per line, the first signs.
    #[serde(default)]
    pub secret_file: Option<String>,
    /// Environment variable holding the keys, same format (instead of `secret_file`).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// An admitted session without a request for this long is no longer counted and
    /// must queue again. Default `20m`.
    #[serde(default)]
    pub session_idle_timeout: Option<DurationText>,
    /// A waiting student who stops polling for this long loses the place. Default `2m`.
    #[serde(default)]
    pub abandon_timeout: Option<DurationText>,
    /// A waiting ticket whose turn passed while its holder was away (a phone asleep,
    /// another app in front) is still honoured this long after `abandon_timeout`: back
    /// within it, the pupil gets the next free place, ahead of the line (once). Default
    /// `15m`; `0s` to turn it off.
    #[serde(default)]
    pub return_grace: Option<DurationText>,
    /// How often the queue page asks for news. Default `10s`.
    #[serde(default)]
    pub poll_interval: Option<DurationText>,
    /// `fifo` (default) or `random` (shuffle the pre-queue of an `event`).
    #[serde(default)]
    pub method: Option<QueueMethodFile>,
    /// Path prefixes of the guarded routes that need admission (default: all). Leave the
    /// queue page's own needs (CSS, images, `/healthz`…) outside.
    #[serde(default)]
    pub inside_paths: Option<Vec<String>>,
    /// Priority classes (from `priority_classes`) and how they go through.
    #[serde(default)]
    pub classes: BTreeMap<String, RoomClassFile>,
    /// Scheduled opening.
    #[serde(default)]
    pub event: Option<EventFile>,
    /// New places handed out per client address (default `60/min`, burst 120: a school
    /// behind one NAT still gets its class in; a bot dropping cookies does not fill the
    /// queue).
    #[serde(default)]
    pub ticket_rate: Option<String>,
    #[serde(default)]
    pub ticket_burst: Option<u32>,
    /// A minijinja template replacing the built-in queue page (reloaded with the config).
    #[serde(default)]
    pub template_file: Option<String>,
    /// Name of the workspace shown on this room's queue pages (default: `pages.brand.name`).
    #[serde(default)]
    pub brand: Option<String>,
    /// Play a short chime when the turn comes while the queue tab is in the background
    /// (the tab's title changes either way). Default `false`.
    #[serde(default)]
    pub turn_sound: Option<bool>,
    /// A response header by which the origin ends the session (logout), freeing its place
    /// at once. Default `X-Ecluse-End-Session`.
    #[serde(default)]
    pub end_session_header: Option<String>,
}
