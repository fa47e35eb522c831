//! Configuration: YAML as ops write it (`file`) → validated runtime types (`runtime`).
//!
//! Loading never panics: every problem comes back as a [`Diagnostic`] with its position.

pub mod file;
pub mod fleet;
pub mod load;
pub mod runtime;
pub mod schema_check;
pub mod tree;
pub mod units;

pub use load::{
    check_file, check_text, check_text_with, json_schema, load_file, LoadError, LoadOptions, Report,
};
pub use runtime::Config;

use tree::Pos;

/// One problem in a config file, at a line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub pos: Pos,
    pub message: String,
}

impl Diagnostic {
    pub fn at(pos: Pos, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            pos,
            message: message.into(),
        }
    }

    /// `FILE:LINE:COL: message`, the format editors and CI annotators understand.
    pub fn render(&self, file: &str) -> String {
        format!(
            "{}:{}:{}: {}",
            file, self.pos.line, self.pos.col, self.message
        )
    }
}
