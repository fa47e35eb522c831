//! Reading a config file: bytes → spanned tree → schema walk → typed structs → runtime.
//! Each stage collects every problem it can before the next one runs.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::file::FileConfig;
use super::runtime::{build, BuildContext, Config, Shared};
use super::tree::{self, Pos};
use super::{schema_check, Diagnostic};

/// Why a config could not be loaded. `Display` gives every diagnostic, one per line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", render_all(path, diagnostics))]
    Invalid {
        path: String,
        diagnostics: Vec<Diagnostic>,
    },
}

fn render_all(path: &str, d: &[Diagnostic]) -> String {
    d.iter()
        .map(|d| d.render(path))
        .collect::<Vec<_>>()
        .join("\n")
}

impl LoadError {
    /// Each problem as `FILE:LINE:COL: message`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            LoadError::Read { .. } => vec![self.to_string()],
            LoadError::Invalid { path, diagnostics } => {
                diagnostics.iter().map(|d| d.render(path)).collect()
            }
        }
    }
}

/// The JSON Schema of the policy file, as editors consume it.
pub fn json_schema() -> serde_json::Value {
    let mut v =
        serde_json::to_value(schemars::schema_for!(FileConfig)).unwrap_or(serde_json::Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "title".into(),
            serde_json::Value::String("ecluse policy file".into()),
        );
    }
    v
}

fn schema() -> &'static serde_json::Value {
    static S: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    S.get_or_init(json_schema)
}

/// Validate and build from text. `path` is used for relative file references and in the
/// runtime config; `version` is the load counter of the running process.
pub fn check_text(
    src: &str,
    path: &Path,
    registry: &Shared,
    version: u64,
) -> Result<Config, Vec<Diagnostic>> {
    let root = tree::parse(src).map_err(|d| vec![d])?;
    let mut problems = schema_check::check(&root, schema());
    if !problems.is_empty() {
        problems.sort_by_key(|d| (d.pos.line, d.pos.col));
        return Err(problems);
    }
    let file: FileConfig = serde_saphyr::from_str_with_options(src, tree::saphyr_options(false))
        .map_err(|e| vec![tree::saphyr_error(&e)])?;
    let hash = {
        let digest = Sha256::digest(src.as_bytes());
        hex::encode(&digest[..8])
    };
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let ctx = BuildContext {
        registry,
        base_dir,
        resolve: true,
    };
    build(&file, &root, &ctx, (path.to_path_buf(), hash, version)).map_err(|mut d| {
        d.sort_by_key(|d| (d.pos.line, d.pos.col));
        d
    })
}

/// Read and build the config at `path`.
pub fn load_file(path: &Path, registry: &Shared, version: u64) -> Result<Config, LoadError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: shown.clone(),
        source,
    })?;
    let src = String::from_utf8(bytes).map_err(|e| LoadError::Invalid {
        path: shown.clone(),
        diagnostics: vec![Diagnostic::at(
            Pos { line: 1, col: 1 },
            format!(
                "the file is not UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )],
    })?;
    check_text(&src, path, registry, version).map_err(|diagnostics| LoadError::Invalid {
        path: shown,
        diagnostics,
    })
}
