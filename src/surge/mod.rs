//! The surge load tool's parts (`ecluse-surge`, `bench/surge.sh`): a minimal browser,
//! the Monday-morning scenario of students and teachers, one arm's run with its time
//! series, the report and its picture.
//!
//! In the library rather than only in the `ecluse-surge` binary so that `ecluse demo
//! --surge` (`crate::demo::surge`) drives the very same students in-process.

pub mod client;
pub mod plot;
pub mod report;
pub mod row;
pub mod run;
pub mod scenario;
