//! `degradation`: levels, thresholds, features, and levels or features forced from the file.

use super::text::{DrainText, DurationText};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Thresholds on the signals ecluse measures (worst origin). Any given one counts.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdsFile {
    /// Requests in flight to an origin over its limit (`max_inflight`), 0 to 1.
    #[serde(default)]
    pub inflight_ratio: Option<f64>,
    /// 95th percentile latency of an origin over the last 10 s.
    #[serde(default)]
    pub p95_latency: Option<DurationText>,
    /// Share of failed exchanges with an origin over the last 10 s (5xx, errors,
    /// time-outs), 0 to 1.
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// Students waiting in the waiting rooms, all together.
    #[serde(default)]
    pub queue_depth: Option<u64>,
}

/// One load level.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LevelFile {
    pub name: String,
    /// Features switched off at this level.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Go up to this level when any of these is reached (not for the first level).
    #[serde(default)]
    pub enter: Option<ThresholdsFile>,
    /// Come back down from this level when all of these are back under (defaults to the
    /// enter thresholds; set them lower so that the level does not flap).
    #[serde(default)]
    pub exit: Option<ThresholdsFile>,
    /// Factor on waiting-room capacity at this level (0 to 1, default 1).
    #[serde(default)]
    pub room_capacity_factor: Option<f64>,
    /// Factor on rate limits at this level (0 to 1, default 1).
    #[serde(default)]
    pub rate_limit_factor: Option<f64>,
    /// Serve stored cache copies whatever their age, without asking the origin, while
    /// this level is on (routes in `revalidate` mode excepted: they always ask).
    #[serde(default)]
    pub serve_stale: Option<bool>,
    /// Least time at this level before moving again, up or down (default: the
    /// degradation's `hold`). E.g. a longer hold on `critical` keeps it on through the
    /// lulls of a surge.
    #[serde(default)]
    pub hold: Option<DurationText>,
}

/// The message shown when a feature is switched off.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeatureFile {
    /// The feature's name as pupils know it, in French (`la visio`), shown on its 503
    /// page. Absent: the page says "ce service" (the internal name never shows).
    #[serde(default)]
    pub name_fr: Option<String>,
    /// The same in English (`video calls`).
    #[serde(default)]
    pub name_en: Option<String>,
    /// Message in French.
    #[serde(default)]
    pub message_fr: Option<String>,
    /// Message in English.
    #[serde(default)]
    pub message_en: Option<String>,
    /// `Retry-After` of the 503 (default `5m`).
    #[serde(default)]
    pub retry_after: Option<DurationText>,
    /// When the feature is switched off, what is already open on its routes (WebSocket
    /// tunnels, long downloads and streams, requests in flight; never uploads) is closed
    /// after this grace: a WebSocket gets a close frame `1013 Try Again Later` with the
    /// message as its reason. `0s` closes at once; `never` leaves them running. Switching
    /// the feature back on during the grace keeps them. Default `30s`.
    #[serde(default)]
    pub drain: Option<DrainText>,
}

/// Degradation: levels, hold time, feature messages.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DegradationFile {
    /// Levels in order, lightest first (the first is the normal state).
    pub levels: Vec<LevelFile>,
    /// Least time at a level before moving again (default `30s`); a level's own `hold`
    /// overrides it.
    #[serde(default)]
    pub hold: Option<DurationText>,
    /// Force a level from the file (ops can also force from the admin API): its name
    /// (`force_level: critical`), or with an expiry
    /// (`force_level: { level: critical, until: "2026-12-01T18:00:00+01:00" }`).
    /// Removing it from the file returns to automatic.
    #[serde(default)]
    pub force_level: Option<ForceLevelFile>,
    /// Force features on (`true`) or off (`false`) whatever the level, e.g.
    /// `{ visio: false }` or `{ visio: { on: false, until: "2026-12-01T18:00:00+01:00" } }`.
    /// Removing one from the file lets it follow the level again.
    #[serde(default)]
    pub force_features: BTreeMap<String, ForceFeatureFile>,
    /// Messages per feature.
    #[serde(default)]
    pub features: BTreeMap<String, FeatureFile>,
}

/// A level forced from the file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ForceLevelFile {
    /// The level's name: forced as long as the file says so.
    Name(String),
    /// The level, with an optional expiry.
    Until(ForcedLevelFile),
}

/// A level forced from the file, with an optional expiry.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForcedLevelFile {
    /// The level's name.
    pub level: String,
    /// Back to automatic at this time, RFC 3339 (`2026-12-01T18:00:00+01:00`). An
    /// absolute time means the same after a reload or a restart; a time already past
    /// forces nothing.
    #[serde(default)]
    pub until: Option<String>,
}

/// A feature forced on or off from the file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ForceFeatureFile {
    /// `true`: on whatever the level; `false`: off whatever the level.
    On(bool),
    /// On or off, with an optional expiry.
    Until(ForcedFeatureFile),
}

/// A feature forced from the file, with an optional expiry.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForcedFeatureFile {
    /// `true`: on whatever the level; `false`: off whatever the level.
    pub on: bool,
    /// Back to following the level at this time, RFC 3339 (`2026-12-01T18:00:00+01:00`).
    #[serde(default)]
    pub until: Option<String>,
}
