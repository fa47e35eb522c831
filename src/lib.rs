//! ecluse: an edge reverse proxy, built on pingora, that keeps a school's digital
//! workspace (ENT) alive through a surge. See docs/architecture.md for the layout and docs/operations.md for running it.

// The surge run's summary is one `json!` literal with many fields.
#![recursion_limit = "256"]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod body_spool;
pub mod cache;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod degrade;
pub mod demo;
pub mod drain;
pub mod instance;
pub mod metrics;
pub mod pages;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod sizing;
pub mod surge;
pub mod tls;
pub mod upstream;
pub mod waiting_room;
pub mod watch;
