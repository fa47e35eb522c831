//! The validated, ready-to-serve configuration. Built from [`FileConfig`] off the request
//! path; the hot path only sees these types (no strings to parse, no serde types).
//!
//! One file per section of the policy file; [`build`] (in `config.rs`) walks them in
//! order. The builders' bodies name the file layer as `super::file::…` (they were written
//! in one file beside `file.rs`): the `use` below keeps those paths meaning the same.
//!
//! [`FileConfig`]: super::file::FileConfig

mod access_log;
mod admin;
mod cache;
mod classes;
mod cluster;
mod config;
mod context;
mod degradation;
mod limits;
mod listen;
mod origins;
mod pages;
mod paths;
mod rooms;
mod routes;
mod server;

use super::file;

pub use access_log::{AccessLog, AccessLogTarget, DEFAULT_REDACT};
pub use admin::{admin_exposure, is_loopback, Admin, Secret};
pub use config::{build, Config};
pub use context::{show_path, BuildContext, Problems, Retained};
pub use limits::{LimitKey, LimitMetrics, RouteLimit};
pub use listen::Tls;
pub use origins::{HealthCheck, Origin, OriginMetrics, MAX_SERVERS_PER_ORIGIN};
pub use routes::{Route, RouteMetrics};
pub use server::{Clients, RequestBodies, Server};
