//! Reading a config file: bytes → spanned tree → schema walk → typed structs → runtime.
//!
//! `ecluse check` promises every problem in one run, so no stage stops the next one where
//! the file's structure allows going on: the schema walk reports every structural problem
//! *and* gives back a repaired copy of the document (faulty parts dropped or replaced by
//! placeholders, see [`schema_check::Checked`]); that copy is built like a valid file, so
//! bad durations, undefined origins and shadowed routes elsewhere are reported in the same
//! run. Problems under a repaired part are not (they would be about the placeholder). Only
//! what makes the file unreadable as a whole stops early: not UTF-8, binary, too big,
//! invalid YAML syntax, a parser limit.
//!
//! A valid file never goes through the repaired copy: it is read by serde-saphyr from its
//! own text, as before, so the repair can only add diagnostics, never change a config.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::file::FileConfig;
use super::runtime::{build, BuildContext, Config, Retained};
use super::tree::{self, Node, Pos, SNode};
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

/// What a load may relax. The default is what `ecluse run` and reloads use.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// `ecluse check --skip-secrets`: a secret that is not there (ticket keys from
    /// `secret_file`/`secret_env`, `admin.token_file`, the TLS certificate and key) is a
    /// warning, not an error; a secret that is there is still checked.
    pub skip_secrets: bool,
}

/// Everything one load found.
pub struct Report {
    /// The built config, when there is no error (warnings allowed).
    pub config: Option<Config>,
    /// Every error, sorted by position, without repeats.
    pub errors: Vec<Diagnostic>,
    /// Every warning, sorted by position, without repeats.
    pub warnings: Vec<Diagnostic>,
}

impl Report {
    fn failed(errors: Vec<Diagnostic>) -> Report {
        Report {
            config: None,
            errors,
            warnings: Vec::new(),
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

/// Sort by position and drop exact repeats (a problem reached by two routes through the
/// checks is shown once).
fn tidy(mut d: Vec<Diagnostic>) -> Vec<Diagnostic> {
    d.sort_by(|a, b| (a.pos.line, a.pos.col, &a.message).cmp(&(b.pos.line, b.pos.col, &b.message)));
    d.dedup();
    d
}

/// Validate and build from text. `path` is used for relative file references and in the
/// runtime config; `version` is the load counter of the running process.
pub fn check_text(
    src: &str,
    path: &Path,
    registry: &Retained,
    version: u64,
) -> Result<Config, Vec<Diagnostic>> {
    let r = check_text_with(src, path, registry, version, LoadOptions::default());
    match r.config {
        Some(c) if r.errors.is_empty() => Ok(c),
        _ => Err(r.errors),
    }
}

/// [`check_text`] with options, returning warnings too.
pub fn check_text_with(
    src: &str,
    path: &Path,
    registry: &Retained,
    version: u64,
    opts: LoadOptions,
) -> Report {
    let root = match tree::parse(src) {
        Ok(r) => r,
        Err(d) => return Report::failed(vec![d]),
    };
    let checked = schema_check::check_and_repair(&root, schema());
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    if checked.problems.is_empty() {
        let file: FileConfig =
            match serde_saphyr::from_str_with_options(src, tree::saphyr_options(false)) {
                Ok(f) => f,
                Err(e) => return Report::failed(vec![tree::saphyr_error_in(&e, src)]),
            };
        let hash = {
            let digest = Sha256::digest(src.as_bytes());
            hex::encode(&digest[..8])
        };
        let ctx = BuildContext {
            registry,
            base_dir,
            resolve: true,
            skip_secrets: opts.skip_secrets,
            warnings: Default::default(),
        };
        let built = build(&file, &root, &ctx, (path.to_path_buf(), hash, version));
        let warnings = tidy(ctx.warnings.take());
        return match built {
            Ok(c) => Report {
                config: Some(c),
                errors: Vec::new(),
                warnings,
            },
            Err(d) => Report {
                config: None,
                errors: tidy(d),
                warnings,
            },
        };
    }

    // Structural problems: report them, and what the sound parts of the file say too.
    let mut errors = checked.problems;
    let mut warnings = Vec::new();
    if let Some(repaired) = &checked.repaired {
        // A scratch registry: building a repaired copy must not touch live state (a reload
        // runs this with the running process's registry at hand).
        let scratch = Retained::default();
        let ctx = BuildContext {
            registry: &scratch,
            base_dir,
            resolve: true,
            skip_secrets: opts.skip_secrets,
            warnings: Default::default(),
        };
        let more = semantic_problems(repaired, &root, &ctx, path);
        let patched = Patched::new(&checked.patched);
        let keep = |d: &Diagnostic| !patched.covers(d);
        errors.extend(more.into_iter().filter(keep));
        warnings.extend(ctx.warnings.take().into_iter().filter(keep));
    }
    Report {
        config: None,
        errors: tidy(errors),
        warnings: tidy(warnings),
    }
}

/// The problems the builder finds in the repaired copy, located in the original tree
/// (paths are kept by the repair). Empty when the copy cannot be read, which only a
/// schema that says less than the structs could cause: the structural problems stand
/// alone then, as they did before the repair existed.
fn semantic_problems(
    repaired: &SNode,
    root: &SNode,
    ctx: &BuildContext,
    path: &Path,
) -> Vec<Diagnostic> {
    let mut text = String::new();
    emit(repaired, &mut text);
    let Ok(file) =
        serde_saphyr::from_str_with_options::<FileConfig>(&text, tree::saphyr_options(false))
    else {
        return Vec::new();
    };
    match build(&file, root, ctx, (path.to_path_buf(), String::new(), 0)) {
        Ok(_) => Vec::new(),
        Err(d) => d,
    }
}

/// The patched paths of a repair, indexed so that filtering stays linear in the number
/// of problems (a file with thousands of faulty routes must not take quadratic time).
struct Patched {
    /// Every patched path and every ancestor of one (`routes[2].match`, `routes[2]`, `routes`).
    paths_and_ancestors: std::collections::HashSet<String>,
    /// Exactly the patched paths.
    paths: std::collections::HashSet<String>,
    /// The entries holding one (`routes[2]`, `origins.ent`).
    entries: std::collections::HashSet<String>,
    /// The names of named entries holding one (`ent` for `origins.ent.x`).
    names: std::collections::HashSet<String>,
}

impl Patched {
    fn new(patched: &[String]) -> Patched {
        let mut p = Patched {
            paths_and_ancestors: Default::default(),
            paths: patched.iter().cloned().collect(),
            entries: Default::default(),
            names: Default::default(),
        };
        for path in patched {
            for (i, c) in path.char_indices() {
                if c == '.' || c == '[' {
                    p.paths_and_ancestors.insert(path[..i].to_string());
                }
            }
            p.paths_and_ancestors.insert(path.clone());
            p.entries.insert(entry_of(path));
            let mut segs = path.split(['.', '[']);
            if let (Some(_), Some(name)) = (segs.next(), segs.next()) {
                if !name.ends_with(']') {
                    p.names.insert(name.to_string());
                }
            }
        }
        p
    }

    /// Whether a diagnostic from the repaired copy may be about a placeholder or a dropped
    /// part rather than about what ops wrote: it is at, above or below a patched path, it
    /// names the entry holding one (`routes[0] (`all`)`), or its subject is a patched named
    /// entry (an origin or room whose faulty definition would otherwise read as "not
    /// defined").
    fn covers(&self, d: &Diagnostic) -> bool {
        // Builder messages are `PATH: text`.
        let (dpath, body) = d.message.split_once(": ").unwrap_or(("", &d.message));
        if !dpath.is_empty() {
            // At or above a patched path.
            if self.paths_and_ancestors.contains(dpath) {
                return true;
            }
            // Below one.
            for (i, c) in dpath.char_indices() {
                if (c == '.' || c == '[') && self.paths.contains(&dpath[..i]) {
                    return true;
                }
            }
        }
        let names_entry = body
            .split(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']')))
            .map(|t| t.trim_end_matches('.'))
            .any(|t| self.entries.contains(t));
        if names_entry {
            return true;
        }
        // "origin `ent` is not defined" when `ent`'s own definition is faulty; only as the
        // subject (the first name): "`entt` is not defined (did you mean `ent`?)" stays.
        body.split('`')
            .nth(1)
            .is_some_and(|subject| self.names.contains(subject))
    }
}

/// The entry a path belongs to: up to its first list index (`routes[2]`), else its first
/// two keys (`origins.ent`).
fn entry_of(p: &str) -> String {
    if let Some(i) = p.find(']') {
        return p[..=i].to_string();
    }
    let mut dots = p.match_indices('.').map(|(i, _)| i);
    match (dots.next(), dots.next()) {
        (Some(_), Some(second)) => p[..second].to_string(),
        _ => p.to_string(),
    }
}

/// The tree as YAML flow text (JSON-like, with YAML's floats): serde-saphyr reads it with
/// exactly the rules it applies to ops' files, which a conversion to another format would
/// not guarantee.
fn emit(n: &SNode, out: &mut String) {
    match &n.node {
        Node::Null => out.push_str("null"),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Int(i) => out.push_str(&i.to_string()),
        Node::Float(f) if f.is_nan() => out.push_str(".nan"),
        Node::Float(f) if f.is_infinite() => out.push_str(if *f > 0.0 { ".inf" } else { "-.inf" }),
        Node::Float(f) => out.push_str(&format!("{f:?}")),
        Node::Str(s) => out.push_str(&quote(s)),
        Node::Seq(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                emit(item, out);
            }
            out.push(']');
        }
        Node::Map(entries) => {
            out.push('{');
            for (i, (k, _, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&quote(k));
                out.push_str(": ");
                emit(v, out);
            }
            out.push('}');
        }
    }
}

/// A double-quoted scalar: JSON's escapes are a subset of YAML's.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// Read and build the config at `path`.
pub fn load_file(path: &Path, registry: &Retained, version: u64) -> Result<Config, LoadError> {
    let shown = path.display().to_string();
    let src = read_policy(path).map_err(|e| match e {
        ReadFailure::Io(source) => LoadError::Read {
            path: shown.clone(),
            source,
        },
        ReadFailure::Unreadable(d) => LoadError::Invalid {
            path: shown.clone(),
            diagnostics: vec![d],
        },
    })?;
    check_text(&src, path, registry, version).map_err(|diagnostics| LoadError::Invalid {
        path: shown,
        diagnostics,
    })
}

/// `ecluse check`: read and check the file at `path` with a fresh registry.
pub fn check_file(path: &Path, opts: LoadOptions) -> Result<Report, LoadError> {
    let src = match read_policy(path) {
        Ok(s) => s,
        Err(ReadFailure::Io(source)) => {
            return Err(LoadError::Read {
                path: path.display().to_string(),
                source,
            })
        }
        Err(ReadFailure::Unreadable(d)) => return Ok(Report::failed(vec![d])),
    };
    let registry = Retained::default();
    Ok(check_text_with(&src, path, &registry, 1, opts))
}

/// Why a file's bytes are not a policy's text.
pub enum ReadFailure {
    /// The file cannot be opened or read.
    Io(std::io::Error),
    /// The bytes are not a YAML text a policy can be: too big, binary, not UTF-8.
    Unreadable(Diagnostic),
}

/// Read a policy file's text: at most [`tree::MAX_FILE_BYTES`] (so that a device or a huge
/// file given by mistake is refused without reading it all), UTF-8, no binary content,
/// each refusal said in a sentence with its position.
pub fn read_policy(path: &Path) -> Result<String, ReadFailure> {
    let f = std::fs::File::open(path).map_err(ReadFailure::Io)?;
    if let Ok(m) = f.metadata() {
        if m.is_file() && m.len() > tree::MAX_FILE_BYTES as u64 {
            return Err(ReadFailure::Unreadable(too_big(&format!(
                "the file is {}",
                tree::human_bytes(usize::try_from(m.len()).unwrap_or(usize::MAX))
            ))));
        }
    }
    let mut bytes = Vec::new();
    f.take(tree::MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadFailure::Io)?;
    policy_text(bytes).map_err(ReadFailure::Unreadable)
}

/// The text of a policy file's bytes, or why they are not one (see [`read_policy`]).
pub fn policy_text(bytes: Vec<u8>) -> Result<String, Diagnostic> {
    let start = Pos { line: 1, col: 1 };
    if bytes.len() > tree::MAX_FILE_BYTES {
        return Err(too_big(&format!(
            "the file is larger than {}",
            tree::human_bytes(tree::MAX_FILE_BYTES)
        )));
    }
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(Diagnostic::at(
            start,
            "the file is UTF-16 (it starts with a UTF-16 byte order mark): save it as UTF-8",
        ));
    }
    // Where a byte is, as a position in the text before it.
    let pos_of = |offset: usize| {
        let before = String::from_utf8_lossy(&bytes[..offset]);
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Pos { line, col }
    };
    if let Some(nul) = bytes.iter().position(|b| *b == 0) {
        return Err(Diagnostic::at(
            pos_of(nul),
            format!(
                "the file is binary (or UTF-16), not a UTF-8 YAML policy: a NUL byte at offset {nul}; is it the right file?"
            ),
        ));
    }
    match String::from_utf8(bytes) {
        Ok(s) => {
            // YAML allows no control character but tab and line breaks (YAML 1.2 §5.1):
            // one at the very start is a binary file; elsewhere, a stray byte.
            if let Some((i, c)) = s
                .char_indices()
                .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{85}'))
            {
                let pos = pos_of_text(&s, i);
                let msg = if i == 0 {
                    format!(
                        "the file starts with the control character U+{:04X}: it looks binary, not a YAML policy; is it the right file?",
                        c as u32
                    )
                } else {
                    format!(
                        "a control character U+{:04X} is not allowed in YAML: remove it",
                        c as u32
                    )
                };
                return Err(Diagnostic::at(pos, msg));
            }
            Ok(s)
        }
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let bytes = e.into_bytes();
            let bad = bytes.get(at).copied().unwrap_or(0);
            let before = String::from_utf8_lossy(&bytes[..at]);
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            Err(Diagnostic::at(
                Pos { line, col },
                format!(
                    "the file is not UTF-8: byte 0x{bad:02X} at offset {at} is not valid UTF-8 (a file saved as Latin-1 or Windows-1252?): save it as UTF-8"
                ),
            ))
        }
    }
}

fn too_big(what: &str) -> Diagnostic {
    Diagnostic::at(
        Pos { line: 1, col: 1 },
        format!(
            "{what} (limit {} for a policy file): is it the right file? A policy is a few KB",
            tree::human_bytes(tree::MAX_FILE_BYTES)
        ),
    )
}

fn pos_of_text(s: &str, i: usize) -> Pos {
    let before = &s[..i];
    Pos {
        line: before.matches('\n').count() + 1,
        col: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_and_mentions() {
        assert_eq!(entry_of("routes[2].match.path_prefix"), "routes[2]");
        assert_eq!(entry_of("origins.ent.read_timeout"), "origins.ent");
        assert_eq!(entry_of("listen"), "listen");
        let p = Patched::new(&["routes[1].match".to_string(), "origins.ent.x".to_string()]);
        let d = |m: &str| Diagnostic::at(Pos { line: 1, col: 1 }, m);
        assert!(p.covers(&d("routes[3].match: shadowed by routes[1] (`a`)")));
        assert!(!p.covers(&d("routes[3].match: shadowed by routes[10] (`a`)")));
        assert!(p.covers(&d("routes[1]: x")));
        assert!(p.covers(&d("routes[1].match.path_prefix: x")));
        assert!(!p.covers(&d("routes[10].match: x")));
        assert!(p.covers(&d("routes[0].origin: origin `ent` is not defined")));
        assert!(!p.covers(&d(
            "routes[0].origin: origin `entt` is not defined (did you mean `ent`?)"
        )));
    }

    #[test]
    fn emitted_text_reads_back() {
        let t = tree::parse("a: [1, 2.5, \"x\\ny\", null, true]\nb: {c: 'q\"'}\n").expect("yaml");
        let mut s = String::new();
        emit(&t, &mut s);
        let back = tree::parse(&s).expect("emitted text is YAML");
        let mut again = String::new();
        emit(&back, &mut again);
        assert_eq!(s, again);
    }

    #[test]
    fn unreadable_bytes_are_explained() {
        let e = policy_text(b"listen: []\n# caf\xe9\n".to_vec()).unwrap_err();
        assert_eq!(e.pos, Pos { line: 2, col: 6 });
        assert!(e.message.contains("not UTF-8"), "{}", e.message);
        let e = policy_text(b"a: 1\n\x00\x01".to_vec()).unwrap_err();
        assert!(e.message.contains("binary"), "{}", e.message);
        let e =
            policy_text("a: 1\n".encode_utf16().flat_map(u16::to_le_bytes).collect()).unwrap_err();
        assert!(e.message.contains("binary") || e.message.contains("UTF-16"));
    }
}
