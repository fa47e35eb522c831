//! The YAML document as a tree of spanned nodes.
//!
//! `ecluse check` must report *every* problem with its `LINE:COL`, but serde stops at the
//! first error. So the file is first parsed into this generic tree (serde-saphyr keeps the
//! location of every node), structural problems are collected by walking the tree against
//! the JSON Schema of the file structs (`schema_check`), and semantic problems found later
//! on the typed structs are located by looking their path up in the tree.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

use super::Diagnostic;

/// A position in the source file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// One YAML node with the place it was written.
#[derive(Debug, Clone)]
pub struct SNode {
    pub pos: Pos,
    pub node: Node,
}

#[derive(Debug, Clone)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<SNode>),
    /// Entries in file order; duplicates are kept so that they can be reported.
    Map(Vec<(String, Pos, SNode)>),
}

impl Node {
    /// The JSON Schema type name of this node, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "boolean",
            Node::Int(_) => "integer",
            Node::Float(_) => "number",
            Node::Str(_) => "string",
            Node::Seq(_) => "list",
            Node::Map(_) => "mapping",
        }
    }
}

/// One step of a path into the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Idx(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}
impl From<String> for Seg {
    fn from(s: String) -> Self {
        Seg::Key(s)
    }
}
impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Idx(i)
    }
}

/// Build a path: `path!["routes", 2, "match"]`.
#[macro_export]
macro_rules! path {
    ($($s:expr),* $(,)?) => { vec![$($crate::config::tree::Seg::from($s)),*] };
}

impl SNode {
    /// The node at `path`, or `Err` with the deepest existing ancestor.
    fn walk(&self, path: &[Seg]) -> Result<&SNode, &SNode> {
        let mut cur = self;
        for seg in path {
            let next = match (seg, &cur.node) {
                (Seg::Key(k), Node::Map(entries)) => entries
                    .iter()
                    .find(|(name, _, _)| name == k)
                    .map(|(_, _, v)| v),
                (Seg::Idx(i), Node::Seq(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => cur = n,
                None => return Err(cur),
            }
        }
        Ok(cur)
    }

    /// The position of the node at `path`, or of the deepest existing ancestor (so a
    /// diagnostic about a missing key points at the mapping that lacks it).
    pub fn locate(&self, path: &[Seg]) -> Pos {
        match self.walk(path) {
            Ok(n) | Err(n) => n.pos,
        }
    }

    /// The position of the *key* `path.last()` (rather than its value), when it exists.
    pub fn locate_key(&self, path: &[Seg]) -> Pos {
        if let Some((Seg::Key(k), parent)) = path.split_last() {
            let cur = match self.walk(parent) {
                Ok(n) => n,
                Err(n) => return n.pos,
            };
            if let Node::Map(entries) = &cur.node {
                if let Some((_, kpos, _)) = entries.iter().find(|(name, _, _)| name == k) {
                    return *kpos;
                }
            }
            return cur.pos;
        }
        self.locate(path)
    }
}

/// A scalar key as text: YAML allows `8080:` or `true:` as keys; we compare them as text.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<KeyText, E> {
                Ok(KeyText(v))
            }
            fn visit_bool<E>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<KeyText, E> {
                Ok(KeyText("null".to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

struct RawNode(Node);

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawNode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<RawNode, E> {
                Ok(RawNode(Node::Null))
            }
            fn visit_none<E>(self) -> Result<RawNode, E> {
                Ok(RawNode(Node::Null))
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<RawNode, D2::Error> {
                RawNode::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawNode, E> {
                Ok(RawNode(Node::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawNode, E> {
                Ok(RawNode(Node::Int(v.into())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawNode, E> {
                Ok(RawNode(Node::Int(v.into())))
            }
            fn visit_i128<E>(self, v: i128) -> Result<RawNode, E> {
                Ok(RawNode(Node::Int(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawNode, E> {
                Ok(RawNode(Node::Float(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawNode, E> {
                Ok(RawNode(Node::Str(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<RawNode, E> {
                Ok(RawNode(Node::Str(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<RawNode, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element::<Spanned<RawNode>>()? {
                    items.push(to_snode(item));
                }
                Ok(RawNode(Node::Seq(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<RawNode, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = a.next_entry::<Spanned<KeyText>, Spanned<RawNode>>()? {
                    let kpos = Pos {
                        line: k.referenced.line() as usize,
                        col: k.referenced.column() as usize,
                    };
                    entries.push((k.value.0, kpos, to_snode(v)));
                }
                Ok(RawNode(Node::Map(entries)))
            }
        }
        d.deserialize_any(V)
    }
}

fn to_snode(s: Spanned<RawNode>) -> SNode {
    SNode {
        pos: Pos {
            line: s.referenced.line() as usize,
            col: s.referenced.column() as usize,
        },
        node: s.value.0,
    }
}

/// The largest policy file read (a real one is a few KB; the biggest reference policy is
/// under 40 KB). Checked before parsing, on the bytes read, so `ecluse check /dev/zero` or a
/// log file given by mistake ends with a sentence instead of eating the memory.
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;

/// The parser's resource budget, explicit so that the messages quote the same limits.
/// serde-saphyr's defaults, except the text of all values together (8 MiB, below the file
/// limit, so that it can be reached and explained too).
pub fn budget() -> serde_saphyr::Budget {
    let mut b = serde_saphyr::Budget::default();
    b.max_total_scalar_bytes = 8 * 1024 * 1024;
    b
}

/// The options every YAML read in ecluse uses: YAML 1.2 booleans only (`yes`/`on` stay
/// strings, so a country code `NO` never turns into `false`), duplicates kept so that the
/// tree walk reports each of them, and the budget above (a config file has no business
/// expanding a billion laughs).
pub fn saphyr_options(keep_duplicates: bool) -> serde_saphyr::Options {
    let dup = if keep_duplicates {
        serde_saphyr::DuplicateKeyPolicy::PassThrough
    } else {
        serde_saphyr::DuplicateKeyPolicy::Error
    };
    serde_saphyr::options! {
        duplicate_keys: dup,
        strict_booleans: true,
        budget: Some(budget()),
    }
}

/// Parse the YAML text into a spanned tree. Only syntax errors and budget breaches fail here.
pub fn parse(src: &str) -> Result<SNode, Diagnostic> {
    if src.trim().is_empty() {
        return Err(Diagnostic::at(
            Pos { line: 1, col: 1 },
            "the file is empty: expected a mapping with at least `listen`, `origins` and `routes`",
        ));
    }
    match serde_saphyr::from_str_with_options::<Spanned<RawNode>>(src, saphyr_options(true)) {
        Ok(root) => Ok(to_snode(root)),
        Err(e) => Err(saphyr_error_in(&e, src)),
    }
}

/// `1234567` as `1,234,567`: limits read by people.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A byte count as ops read it: `812 bytes`, `40.1 KiB`, `12.0 MiB`.
pub fn human_bytes(n: usize) -> String {
    const KIB: f64 = 1024.0;
    let f = n as f64;
    let (v, unit) = if f < KIB {
        return format!("{n} bytes");
    } else if f < KIB * KIB {
        (f / KIB, "KiB")
    } else if f < KIB * KIB * KIB {
        (f / (KIB * KIB), "MiB")
    } else {
        (f / (KIB * KIB * KIB), "GiB")
    };
    let text = format!("{v:.1}");
    format!("{} {unit}", text.strip_suffix(".0").unwrap_or(&text))
}

/// How big the file is, for the budget sentences: `(2.3 MiB, 41,002 lines)`.
fn file_size(src: &str) -> String {
    if src.is_empty() {
        return "the file".to_string();
    }
    let lines = src.lines().count();
    format!(
        "the file ({}, {} line{})",
        human_bytes(src.len()),
        thousands(lines),
        if lines == 1 { "" } else { "s" }
    )
}

const RIGHT_FILE: &str = "is it the right file? A policy has a few hundred";

/// The sentence for a parser limit: which limit, its value, how big the file is, and what
/// to do. serde-saphyr's own text (`budget breached: Nodes { nodes: 250001 }`) names
/// internals; ops need to know whether they gave the wrong file or wrote something that
/// expands (anchors, aliases, merge keys).
fn budget_sentence(breach: &serde_saphyr::budget::BudgetBreach, src: &str) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    let b = budget();
    let file = file_size(src);
    match breach {
        B::Nodes { .. } => format!(
            "{file} has more than {} YAML values, lists and mappings (limit {}): {RIGHT_FILE} values",
            thousands(b.max_nodes),
            thousands(b.max_nodes)
        ),
        B::Events { .. } => format!(
            "{file} has more than {} YAML parser events (limit {}): {RIGHT_FILE} values",
            thousands(b.max_events),
            thousands(b.max_events)
        ),
        B::Depth { .. } => format!(
            "{file} nests lists and mappings more than {} levels deep (limit {}): {RIGHT_FILE} values, nested a few levels",
            b.max_depth, b.max_depth
        ),
        B::Aliases { .. } => format!(
            "{file} uses more than {} aliases (`*name`) (limit {}): write the values out instead of repeating aliases",
            thousands(b.max_aliases),
            thousands(b.max_aliases)
        ),
        B::Anchors { .. } => format!(
            "{file} defines more than {} anchors (`&name`) (limit {}): {RIGHT_FILE} values",
            thousands(b.max_anchors),
            thousands(b.max_anchors)
        ),
        B::AliasAnchorRatio { aliases, anchors } => format!(
            "{file} uses {} aliases (`*name`) for {} anchor{} (`&name`): more than {} aliases per anchor is refused, as it is how a small file expands into a huge one (\"billion laughs\"); write the values out",
            thousands(*aliases),
            thousands(*anchors),
            if *anchors == 1 { "" } else { "s" },
            b.alias_anchor_ratio_multiplier
        ),
        B::MergeKeys { .. } => format!(
            "{file} uses more than {} merge keys (`<<`) (limit {}): write the values out",
            thousands(b.max_merge_keys),
            thousands(b.max_merge_keys)
        ),
        B::ScalarBytes { .. } => format!(
            "{file} holds more than {} of text in its values (limit {}): {RIGHT_FILE} short values",
            human_bytes(b.max_total_scalar_bytes),
            human_bytes(b.max_total_scalar_bytes)
        ),
        B::Documents { .. } => format!(
            "{file} holds more than {} YAML documents (limit {}): a policy is one document, without `---` separators",
            thousands(b.max_documents),
            thousands(b.max_documents)
        ),
        B::InputBytes { .. } => format!(
            "{file} is larger than {} (limit {}): {RIGHT_FILE} lines",
            human_bytes(MAX_FILE_BYTES),
            human_bytes(MAX_FILE_BYTES)
        ),
        B::RecordedAnchorEvents { .. } | B::RecordedAnchorBytes { .. } => format!(
            "the anchors (`&name`) in {file} copy more values than the parser keeps (limit {} values, {}): write the values out instead of repeating aliases",
            thousands(b.max_recorded_anchor_events),
            human_bytes(b.max_recorded_anchor_bytes)
        ),
        B::InclusionDepth { .. } => {
            "`!include` is not supported in a policy: write everything in one file".to_string()
        }
        B::SequenceUnbalanced => format!(
            "{file} has more closing than opening lists or mappings: is it truncated or not YAML?"
        ),
        other => format!(
            "{file} is over a YAML parser limit ({other:?}): {RIGHT_FILE} values"
        ),
    }
}

/// Unwrap serde-saphyr's snippet and alias wrappers to the error that says what happened.
fn innermost(mut e: &serde_saphyr::Error) -> &serde_saphyr::Error {
    loop {
        match e {
            serde_saphyr::Error::WithSnippet { error, .. }
            | serde_saphyr::Error::AliasError { error, .. } => e = error,
            other => return other,
        }
    }
}

/// Turn a serde-saphyr error into one diagnostic, keeping its location and only the first
/// line of its message (the rest is a source snippet meant for a terminal).
pub fn saphyr_error(e: &serde_saphyr::Error) -> Diagnostic {
    saphyr_error_in(e, "")
}

/// [`saphyr_error`], with the source text so that limits can say how big the file is and
/// parser phrasings that name library internals are replaced by sentences for ops.
pub fn saphyr_error_in(e: &serde_saphyr::Error, src: &str) -> Diagnostic {
    let pos = e
        .location()
        .map(|l| Pos {
            line: l.line() as usize,
            col: l.column() as usize,
        })
        .filter(|p| p.line >= 1 && p.col >= 1)
        .unwrap_or(Pos { line: 1, col: 1 });
    match innermost(e) {
        serde_saphyr::Error::Budget { breach, .. } => {
            return Diagnostic::at(pos, budget_sentence(breach, src));
        }
        serde_saphyr::Error::MultipleDocuments { .. } => {
            return Diagnostic::at(
                pos,
                "a second YAML document starts here, after a `---` line: a policy is one document; remove the separator or split the file",
            );
        }
        _ => {}
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    // saphyr prefixes "error: line L column C: "; our own prefix already says where.
    let msg = first.strip_prefix("error: ").unwrap_or(first);
    let msg = match msg.find(": ") {
        Some(i) if msg.starts_with("line ") => &msg[i + 2..],
        _ => msg,
    };
    let msg = if msg.contains("recursion limit exceeded") {
        // The parser's own nesting guard (flow collections), before the depth budget.
        let b = budget();
        format!(
            "{} nests lists and mappings more than {} levels deep (limit {}): {RIGHT_FILE} values, nested a few levels",
            file_size(src),
            b.max_depth,
            b.max_depth
        )
    } else {
        msg.to_string()
    };
    Diagnostic::at(pos, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_and_duplicates() {
        let t = parse("a: 1\nb:\n  - x: yes\na: 2\n").expect("valid yaml");
        let Node::Map(entries) = &t.node else {
            panic!("root is a map")
        };
        assert_eq!(entries.len(), 3, "duplicate `a` kept for reporting");
        assert_eq!(entries[2].1, Pos { line: 4, col: 1 });
        let p = path!["b", 0, "x"];
        assert_eq!(t.locate(&p), Pos { line: 3, col: 8 });
        // strict booleans: `yes` is a string
        let Node::Map(b) = &t.node else { panic!() };
        let Node::Seq(items) = &b[1].2.node else {
            panic!()
        };
        let Node::Map(x) = &items[0].node else {
            panic!()
        };
        assert!(matches!(x[0].2.node, Node::Str(ref s) if s == "yes"));
    }

    #[test]
    fn syntax_error_has_location() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
        assert!(!e.message.starts_with("error"), "{}", e.message);
    }

    #[test]
    fn locate_missing_points_at_parent() {
        let t = parse("routes:\n  - name: a\n").expect("valid");
        assert_eq!(
            t.locate(&{
                let p: Vec<Seg> = path!["routes", 0, "origin"];
                p
            }),
            Pos { line: 2, col: 5 }
        );
    }
}
