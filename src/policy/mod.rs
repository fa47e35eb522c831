//! Pure decisions over plain types: no pingora types, no I/O, testable without a socket.

pub mod cache_rules;
pub mod classes;
pub mod concurrency;
pub mod cookies;
pub mod degrade;
pub mod estimate;
pub mod forwarding;
pub mod host;
pub mod path;
pub mod rate_limit;
pub mod request_id;
pub mod room_sizing;
pub mod route;
pub mod signals;
pub mod ticket;
pub mod waiting_room;
pub mod windows_lookalikes;
