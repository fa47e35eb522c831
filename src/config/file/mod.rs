//! The configuration as ops write it: serde structs that mirror the YAML one to one.
//!
//! Nothing here is used on the request path: `runtime/` turns these into validated types.
//! Doc comments become descriptions in the generated JSON Schema (`config/ecluse.schema.json`),
//! which editors show on hover, so they are written for ops.
//!
//! One file per section of the policy file; [`FileConfig`] (in `config.rs`) holds them.

mod access_log;
mod admin;
mod cache;
mod classes;
mod cluster;
mod config;
mod degradation;
mod limits;
mod listen;
mod origins;
mod pages;
mod rooms;
mod routes;
mod server;
mod text;

pub use access_log::AccessLogFile;
pub use admin::AdminFile;
pub use cache::{CacheDiskFile, CacheModeFile, CacheQueryFile, CacheStorageFile, RouteCacheFile};
pub use classes::PriorityClassFile;
pub use cluster::{ClusterFile, FailModeFile, SentinelFile};
pub use config::FileConfig;
pub use degradation::{
    DegradationFile, FeatureFile, ForceFeatureFile, ForceLevelFile, ForcedFeatureFile,
    ForcedLevelFile, LevelFile, ThresholdsFile,
};
pub use limits::{ExemptFile, LimitKeyFile, LimitModeFile, RateLimitFile};
pub use listen::{CertificateFile, ListenEntryFile, ListenFile, TlsFile};
pub use origins::{
    AdaptiveFile, BalanceFile, HealthCheckFile, OriginFile, OriginTlsFile, OriginTlsSettingsFile,
    PassiveFile,
};
pub use pages::{BrandFile, PageTemplatesFile, PagesFile};
pub use rooms::{
    AutoWord, CountOrAuto, EventFile, QueueMethodFile, RoomAutoFile, RoomClassFile, WaitingRoomFile,
};
pub use routes::{MatchFile, RouteFile};
pub use server::{
    ClientsFile, EscapedSlashesFile, ForwardingFile, OddNamesFile, PathParamsFile, PathsFile,
    RequestBodiesFile, ServerFile,
};
pub use text::{DrainText, DurationText, SizeText};
