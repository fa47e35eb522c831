//! The simulated ENT origin used by `ecluse demo`, the tests and the benches.
//!
//! [`DemoOrigin`] is a real HTTP server (HTTP/1.1 keep-alive and h2c, via hyper) that
//! behaves like a school's digital workspace: login with a session cookie, French HTML
//! pages, private versioned assignment PDFs with ETag/Last-Modified revalidation, a
//! CPU-heavy `/visio`, an upload endpoint that records checksums, and a capacity model in
//! which latency grows with concurrency and the server fails past a hard limit.
//!
//! Endpoints (paths exact unless noted):
//! - `GET /`, `GET /pages/{anything}`: HTML page (2-8 KB).
//! - `GET /healthz`: `200 ok`, outside the capacity model.
//! - `GET /login`: login form; `POST /login`: sets `ENTSESSION`, 303 to `/`.
//! - `GET /files/assignments/{id}.pdf`: 100 KB-5 MB PDF, needs a session (401 without a
//!   cookie, 403 with an unknown one), honours `If-None-Match` / `If-Modified-Since`.
//! - `GET /visio`, `/visio/...`: burns `visio_cpu` of CPU.
//! - `POST /files/upload`: records the body's SHA-256, answers 201 JSON (413 past 50 MB).
//!   With `?assignment=ID` the body also becomes the new version of that file (a
//!   teacher's exam paper; exam slots, see [`DemoOrigin::start_with_exam_slots`], are
//!   404 until then).
//! - `GET`/`POST /logout`: 303 to `/login` with `X-Ecluse-End-Session: 1`, which frees the
//!   student's place in ecluse's waiting room.
//! - `GET /__origin/stats`: [`OriginStats::to_json`]; `POST /__origin/fault` with body
//!   `none` or `drop_reused`: switch [`Fault`] from another process; `POST
//!   /__origin/reset_peak`: restart peak in-flight tracking (between bench phases).
//! - anything else: 404.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use ecluse::demo::{DemoOrigin, OriginOptions};
//! let origin = DemoOrigin::start("127.0.0.1:0".parse().unwrap(), OriginOptions::default()).await?;
//! println!("ENT origin on {}", origin.url("/"));
//! // ... keep `origin` alive while it should serve ...
//! origin.shutdown().await;
//! # Ok(()) }
//! ```

mod content;
mod origin;
pub mod run;
mod sessions;
mod stats;
pub mod surge;

pub use content::{file_body, file_len, FILE_MAX_LEN, FILE_MIN_LEN};
pub use origin::{DemoOrigin, Fault, OriginError, OriginOptions, END_SESSION_HEADER, UPLOAD_LIMIT};
pub use sessions::{DEFAULT_MAX_SESSIONS, SESSION_COOKIE};
pub use stats::{OriginStats, UploadRecord};
