//! ecluse: an edge reverse proxy, built on pingora, that keeps a school's digital
//! workspace (ENT) alive through a surge. See `DESIGN.md` in the shared folder and the README.

pub mod config;
pub mod demo;
pub mod metrics;
pub mod policy;
pub mod upstream;
