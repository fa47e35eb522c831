//! Structural validation of the YAML tree against the JSON Schema generated from the file
//! structs (`schemars`). One walk collects every unknown key (with a "did you mean"),
//! duplicate key, missing required key, wrong type and unknown enum value, each with its
//! position, so ops see all of them at once instead of fixing one error per run.
//!
//! Only the subset of JSON Schema that schemars emits for our structs is interpreted:
//! `$ref`, `type`, `properties`, `additionalProperties`, `required`, `items`, `enum`,
//! `const`, `anyOf`/`oneOf`, `minimum`/`maximum`. Value syntax (durations, rates, CIDRs)
//! is checked later on the typed structs, where the parse errors say more.

use serde_json::Value;

use super::tree::{Node, Pos, SNode};
use super::Diagnostic;

/// Walk `root` against `schema` (the root schema, holding `$defs`).
pub fn check(root: &SNode, schema: &Value) -> Vec<Diagnostic> {
    check_and_repair(root, schema).problems
}

/// What the structural walk found, and a copy of the document that the file structs can
/// read despite it.
pub struct Checked {
    /// Every structural problem, in walk order.
    pub problems: Vec<Diagnostic>,
    /// The document with each faulty part taken out: unknown and duplicate keys dropped,
    /// a value of the wrong type dropped when its key is optional, and replaced by a
    /// placeholder of the right type when it is required (list items too, so that
    /// `routes[3]` stays `routes[3]`). `None` when the root itself is unusable.
    pub repaired: Option<SNode>,
    /// The paths (`routes[2].match`, as messages write them) that were dropped or replaced:
    /// a later check must not report what follows from a placeholder.
    pub patched: Vec<String>,
}

/// [`check`], and the repaired document: so that `ecluse check` can go on to the checks on
/// values and references (durations, undefined origins…) in the parts that are sound,
/// instead of stopping at the first wrong type.
pub fn check_and_repair(root: &SNode, schema: &Value) -> Checked {
    let mut out = Vec::new();
    let mut patched = Vec::new();
    let mut w = Walker {
        root: schema,
        out: &mut out,
        patched: &mut patched,
    };
    let repaired = w.walk(root, schema, "");
    Checked {
        problems: out,
        repaired,
        patched,
    }
}

struct Walker<'a> {
    root: &'a Value,
    out: &'a mut Vec<Diagnostic>,
    patched: &'a mut Vec<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The closest candidate by edit distance, when it is close enough to be a plausible typo.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(word, c);
        let close = strsim::levenshtein(word, c) <= 2.max(c.len() / 4) || score > 0.85;
        if close && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

fn type_matches(ty: &str, node: &Node) -> bool {
    matches!(
        (ty, node),
        ("null", Node::Null)
            | ("boolean", Node::Bool(_))
            | ("integer", Node::Int(_))
            | ("number", Node::Int(_) | Node::Float(_))
            | ("string", Node::Str(_))
            | ("array", Node::Seq(_))
            | ("object", Node::Map(_))
    )
}

fn type_words(ty: &str) -> &str {
    match ty {
        "array" => "a list",
        "object" => "a mapping",
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "true or false",
        "null" => "nothing",
        other => other,
    }
}

fn scalar_text(node: &Node) -> Option<String> {
    match node {
        Node::Str(s) => Some(s.clone()),
        Node::Bool(b) => Some(b.to_string()),
        Node::Int(i) => Some(i.to_string()),
        Node::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

impl<'a> Walker<'a> {
    fn err(&mut self, pos: Pos, path: &str, msg: String) {
        let message = if path.is_empty() {
            msg
        } else {
            format!("{path}: {msg}")
        };
        self.out.push(Diagnostic::at(pos, message));
    }

    fn resolve(&self, mut schema: &'a Value) -> &'a Value {
        // Follow local references; schemars only emits `#/$defs/Name`.
        for _ in 0..32 {
            match schema.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let ptr = r.trim_start_matches('#');
                    match self.root.pointer(ptr) {
                        Some(s) => schema = s,
                        None => return schema,
                    }
                }
                None => return schema,
            }
        }
        schema
    }

    /// Whether the node's shape could belong to this (sub)schema, without descending.
    fn shallow_ok(&self, node: &Node, schema: &'a Value) -> bool {
        let schema = self.resolve(schema);
        if let Some(branches) = schema.get("anyOf").or_else(|| schema.get("oneOf")) {
            return branches
                .as_array()
                .is_some_and(|bs| bs.iter().any(|b| self.shallow_ok(node, b)));
        }
        if let Some(c) = schema.get("const") {
            return scalar_text(node).is_some_and(|t| c.as_str() == Some(t.as_str()));
        }
        match schema.get("type") {
            Some(Value::String(t)) => type_matches(t, node),
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(t, node)),
            _ => {
                if schema.get("properties").is_some() {
                    matches!(node, Node::Map(_))
                } else {
                    true
                }
            }
        }
    }

    fn describe(&self, schema: &'a Value) -> String {
        let schema = self.resolve(schema);
        if let Some(words) = schema.get("x-ecluse-expected").and_then(Value::as_str) {
            return words.to_string();
        }
        if let Some(branches) = schema.get("anyOf").or_else(|| schema.get("oneOf")) {
            let parts: Vec<String> = branches
                .as_array()
                .map(|bs| bs.iter().map(|b| self.describe(b)).collect())
                .unwrap_or_default();
            let mut parts: Vec<String> = parts.into_iter().filter(|p| p != "nothing").collect();
            parts.dedup();
            return parts.join(" or ");
        }
        if let Some(c) = schema.get("const") {
            return format!("`{}`", c.as_str().unwrap_or("?"));
        }
        match schema.get("type") {
            Some(Value::String(t)) => type_words(t).to_string(),
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .map(type_words)
                .collect::<Vec<_>>()
                .join(" or "),
            _ => "a value".to_string(),
        }
    }

    /// Walk `node` against `schema`, reporting every problem, and return the node as the
    /// file structs can read it (see [`Checked::repaired`]), or `None` when it cannot be
    /// read at all (wrong type, unknown enum value, number out of range).
    fn walk(&mut self, node: &SNode, schema: &'a Value, path: &str) -> Option<SNode> {
        let schema = self.resolve(schema);
        if schema.as_bool() == Some(true) {
            return Some(node.clone());
        }

        if let Some(branches) = schema
            .get("anyOf")
            .or_else(|| schema.get("oneOf"))
            .and_then(Value::as_array)
        {
            // Enums with documented variants come as oneOf of consts.
            let consts: Vec<&str> = branches
                .iter()
                .filter_map(|b| self.resolve(b).get("const").and_then(Value::as_str))
                .collect();
            if consts.len() == branches.len() && !consts.is_empty() {
                return self.check_enum(node, &consts, path).then(|| node.clone());
            }
            let fitting: Vec<&Value> = branches
                .iter()
                .filter(|b| self.shallow_ok(&node.node, b))
                .collect();
            return match fitting.len() {
                // `Option<T>` is `T` or null: with a single real branch, its own walk says
                // more (an unknown enum value with its "did you mean").
                0 if non_null_branch(self, branches).is_some() => {
                    let b = non_null_branch(self, branches)?;
                    self.walk(node, b, path)
                }
                0 => {
                    let want = self.describe(schema);
                    self.err(
                        node.pos,
                        path,
                        format!("expected {want}, found {}", node.node.kind()),
                    );
                    None
                }
                1 => self.walk(node, fitting[0], path),
                _ => {
                    // Keep the branch that explains the node with the fewest problems.
                    let mut best: Option<(Vec<Diagnostic>, Vec<String>, Option<SNode>)> = None;
                    for b in fitting {
                        let mut trial = Vec::new();
                        let mut trial_patched = Vec::new();
                        let mut w = Walker {
                            root: self.root,
                            out: &mut trial,
                            patched: &mut trial_patched,
                        };
                        let repaired = w.walk(node, b, path);
                        if best
                            .as_ref()
                            .is_none_or(|(bst, _, _)| trial.len() < bst.len())
                        {
                            best = Some((trial, trial_patched, repaired));
                        }
                    }
                    let (problems, patched, repaired) = best.unwrap_or_default();
                    self.out.extend(problems);
                    self.patched.extend(patched);
                    repaired
                }
            };
        }

        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            let names: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
            if matches!(node.node, Node::Null) && values.iter().any(Value::is_null) {
                return Some(node.clone());
            }
            return self.check_enum(node, &names, path).then(|| node.clone());
        }
        if let Some(c) = schema.get("const").and_then(Value::as_str) {
            return self.check_enum(node, &[c], path).then(|| node.clone());
        }

        let type_ok = match schema.get("type") {
            Some(Value::String(t)) => type_matches(t, &node.node),
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(t, &node.node)),
            _ => true,
        };
        if !type_ok {
            let want = self.describe(schema);
            let found = match &node.node {
                Node::Str(s) if s.len() <= 40 => format!("string `{s}`"),
                other => other.kind().to_string(),
            };
            self.err(node.pos, path, format!("expected {want}, found {found}"));
            return None;
        }

        match &node.node {
            Node::Map(entries) => Some(self.walk_map(node, entries, schema, path)),
            Node::Seq(items) => {
                let Some(item_schema) = schema.get("items") else {
                    return Some(node.clone());
                };
                let mut kept = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let sub = format!("{path}[{i}]");
                    match self.walk(item, item_schema, &sub) {
                        Some(n) => kept.push(n),
                        None => {
                            // A placeholder keeps the later items at their index.
                            kept.push(SNode {
                                pos: item.pos,
                                node: self.placeholder(item_schema, 0),
                            });
                            self.patched.push(sub);
                        }
                    }
                }
                Some(SNode {
                    pos: node.pos,
                    node: Node::Seq(kept),
                })
            }
            Node::Int(i) => {
                let mut ok = true;
                let (fmin, fmax) = format_range(schema);
                let min = schema.get("minimum").and_then(Value::as_f64);
                let max = schema.get("maximum").and_then(Value::as_f64);
                if let Some(min) = min {
                    if (*i as f64) < min {
                        self.err(node.pos, path, format!("must be at least {min}, found {i}"));
                        ok = false;
                    }
                }
                if let Some(max) = max {
                    if (*i as f64) > max {
                        self.err(node.pos, path, format!("must be at most {max}, found {i}"));
                        ok = false;
                    }
                }
                // The integer's own width (`u32`…), which schemars states as a format:
                // a value serde would refuse is reported here with the others.
                if ok && fmin.is_some_and(|m| *i < m) {
                    self.err(
                        node.pos,
                        path,
                        format!("must be at least {}, found {i}", fmin.unwrap_or_default()),
                    );
                    ok = false;
                }
                if ok && fmax.is_some_and(|m| *i > m) {
                    self.err(
                        node.pos,
                        path,
                        format!("must be at most {}, found {i}", fmax.unwrap_or_default()),
                    );
                    ok = false;
                }
                ok.then(|| node.clone())
            }
            _ => Some(node.clone()),
        }
    }

    /// A value of the shape `schema` asks for, standing in for a missing or faulty one so
    /// that the rest of its mapping or list can still be read. What it holds does not
    /// matter: every later problem under its path is dropped.
    fn placeholder(&self, schema: &'a Value, depth: usize) -> Node {
        let schema = self.resolve(schema);
        if depth > 16 {
            return Node::Null;
        }
        if let Some(c) = schema.get("const") {
            return json_scalar(c);
        }
        if let Some(v) = schema
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|v| v.first())
        {
            return json_scalar(v);
        }
        if let Some(branches) = schema
            .get("anyOf")
            .or_else(|| schema.get("oneOf"))
            .and_then(Value::as_array)
        {
            // Prefer a branch that is not `null`: an `Option` reads `null` as absent, but
            // a required key of an enum type does not.
            let pick = branches
                .iter()
                .find(|b| self.resolve(b).get("type").and_then(Value::as_str) != Some("null"))
                .or(branches.first());
            return pick.map_or(Node::Null, |b| self.placeholder(b, depth + 1));
        }
        let ty = match schema.get("type") {
            Some(Value::String(t)) => t.as_str(),
            Some(Value::Array(ts)) => {
                let ts: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
                if ts.contains(&"null") {
                    "null"
                } else {
                    ts.first().copied().unwrap_or("null")
                }
            }
            _ if schema.get("properties").is_some() => "object",
            _ => "null",
        };
        match ty {
            "string" => Node::Str(String::new()),
            "integer" | "number" => {
                let min = schema.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
                Node::Int(min.ceil() as i128)
            }
            "boolean" => Node::Bool(false),
            "array" => Node::Seq(Vec::new()),
            "object" => {
                let props = schema.get("properties").and_then(Value::as_object);
                let mut entries = Vec::new();
                for r in schema
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    let sub = props.and_then(|p| p.get(r)).unwrap_or(&Value::Null);
                    entries.push((
                        r.to_string(),
                        Pos::default(),
                        SNode {
                            pos: Pos::default(),
                            node: self.placeholder(sub, depth + 1),
                        },
                    ));
                }
                Node::Map(entries)
            }
            _ => Node::Null,
        }
    }

    /// Whether the scalar is one of `names`; reports it when not.
    fn check_enum(&mut self, node: &SNode, names: &[&str], path: &str) -> bool {
        let Some(text) = scalar_text(&node.node) else {
            self.err(
                node.pos,
                path,
                format!(
                    "expected one of {}, found {}",
                    quote_list(names),
                    node.node.kind()
                ),
            );
            return false;
        };
        if names.contains(&text.as_str()) {
            return true;
        }
        let hint = did_you_mean(&text, names.iter().copied())
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        self.err(
            node.pos,
            path,
            format!(
                "unknown value `{text}`{hint}; expected one of {}",
                quote_list(names)
            ),
        );
        false
    }

    fn walk_map(
        &mut self,
        node: &SNode,
        entries: &[(String, Pos, SNode)],
        schema: &'a Value,
        path: &str,
    ) -> SNode {
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut seen: Vec<(&str, Pos)> = Vec::with_capacity(entries.len());
        let mut kept: Vec<(String, Pos, SNode)> = Vec::with_capacity(entries.len());
        for (key, kpos, value) in entries {
            let sub = join(path, key);
            if let Some((_, first)) = seen.iter().find(|(k, _)| k == key) {
                self.err(
                    *kpos,
                    path,
                    format!(
                        "duplicate key `{key}` (first set at line {}:{}); YAML keeps only one, so remove the other",
                        first.line, first.col
                    ),
                );
                // Which of the two counts is not known: nothing under it is checked further.
                self.patched.push(sub);
                continue;
            }
            seen.push((key, *kpos));
            let value_schema = match props.and_then(|p| p.get(key.as_str())) {
                Some(p) => p,
                None => match additional {
                    Some(Value::Bool(false)) => {
                        let known: Vec<&str> = props
                            .map(|p| p.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        let hint = did_you_mean(key, known.iter().copied())
                            .map(|s| format!(" (did you mean `{s}`?)"))
                            .unwrap_or_else(|| {
                                if known.is_empty() {
                                    String::new()
                                } else {
                                    format!("; known keys: {}", quote_list(&known))
                                }
                            });
                        self.err(*kpos, path, format!("unknown key `{key}`{hint}"));
                        self.patched.push(sub);
                        continue;
                    }
                    Some(s @ Value::Object(_)) => s,
                    _ => {
                        kept.push((key.clone(), *kpos, value.clone()));
                        continue;
                    }
                },
            };
            match self.walk(value, value_schema, &sub) {
                Some(v) => kept.push((key.clone(), *kpos, v)),
                None => {
                    if required.contains(&key.as_str()) {
                        let stand_in = self.placeholder(value_schema, 0);
                        kept.push((
                            key.clone(),
                            *kpos,
                            SNode {
                                pos: value.pos,
                                node: stand_in,
                            },
                        ));
                    }
                    self.patched.push(sub);
                }
            }
        }
        for r in &required {
            if !entries.iter().any(|(k, _, _)| k == r) {
                self.err(node.pos, path, format!("missing required key `{r}`"));
                let sub_schema = props.and_then(|p| p.get(*r)).unwrap_or(&Value::Null);
                kept.push((
                    r.to_string(),
                    node.pos,
                    SNode {
                        pos: node.pos,
                        node: self.placeholder(sub_schema, 0),
                    },
                ));
                self.patched.push(join(path, r));
            }
        }
        SNode {
            pos: node.pos,
            node: Node::Map(kept),
        }
    }
}

/// The one branch of an `anyOf` that is not `null`, when there is exactly one.
fn non_null_branch<'a>(w: &Walker<'a>, branches: &'a [Value]) -> Option<&'a Value> {
    let mut real = branches
        .iter()
        .filter(|b| w.resolve(b).get("type").and_then(Value::as_str) != Some("null"));
    match (real.next(), real.next()) {
        (Some(b), None) => Some(b),
        _ => None,
    }
}

/// The range of an integer `format` as schemars writes it (`uint32`, `int64`…).
fn format_range(schema: &Value) -> (Option<i128>, Option<i128>) {
    let Some(f) = schema.get("format").and_then(Value::as_str) else {
        return (None, None);
    };
    match f {
        "uint8" => (Some(0), Some(u8::MAX.into())),
        "uint16" => (Some(0), Some(u16::MAX.into())),
        "uint32" => (Some(0), Some(u32::MAX.into())),
        "uint64" | "uint" => (Some(0), Some(u64::MAX.into())),
        "int8" => (Some(i8::MIN.into()), Some(i8::MAX.into())),
        "int16" => (Some(i16::MIN.into()), Some(i16::MAX.into())),
        "int32" => (Some(i32::MIN.into()), Some(i32::MAX.into())),
        "int64" | "int" => (Some(i64::MIN.into()), Some(i64::MAX.into())),
        _ => (None, None),
    }
}

fn json_scalar(v: &Value) -> Node {
    match v {
        Value::String(s) => Node::Str(s.clone()),
        Value::Bool(b) => Node::Bool(*b),
        Value::Number(n) => n
            .as_i64()
            .map(|i| Node::Int(i.into()))
            .unwrap_or_else(|| Node::Float(n.as_f64().unwrap_or(0.0))),
        _ => Node::Null,
    }
}

fn quote_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tree;
    use schemars::JsonSchema;
    use serde::Deserialize;

    #[allow(dead_code)]
    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields, rename_all = "snake_case")]
    enum Mode {
        RoundRobin,
        LeastConnections,
    }

    #[allow(dead_code)]
    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        path_prefix: String,
        methods: Option<Vec<String>>,
    }

    #[allow(dead_code)]
    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Top {
        name: String,
        threads: Option<u32>,
        mode: Option<Mode>,
        inner: Option<Inner>,
        map: Option<std::collections::BTreeMap<String, Inner>>,
    }

    fn run(src: &str) -> Vec<String> {
        let schema = serde_json::to_value(schemars::schema_for!(Top)).expect("schema");
        let t = tree::parse(src).expect("yaml");
        check(&t, &schema)
            .into_iter()
            .map(|d| format!("{}:{}: {}", d.pos.line, d.pos.col, d.message))
            .collect()
    }

    #[test]
    fn reports_every_problem_at_once() {
        let errs = run(
            "name: x\nthreds: 2\nmode: round_robn\ninner:\n  path_prefx: /\nmap:\n  a: { path_prefix: 3, methods: GET }\nname: y\n",
        );
        let all = errs.join("\n");
        assert!(
            all.contains("2:1: unknown key `threds` (did you mean `threads`?)"),
            "{all}"
        );
        assert!(
            all.contains("3:7: mode: unknown value `round_robn` (did you mean `round_robin`?)"),
            "{all}"
        );
        assert!(
            all.contains("5:3: inner: unknown key `path_prefx` (did you mean `path_prefix`?)"),
            "{all}"
        );
        assert!(
            all.contains("inner: missing required key `path_prefix`"),
            "{all}"
        );
        assert!(
            all.contains("map.a.path_prefix: expected a string, found integer"),
            "{all}"
        );
        assert!(
            all.contains("map.a.methods: expected a list, found string `GET`"),
            "{all}"
        );
        assert!(
            all.contains("8:1: duplicate key `name` (first set at line 1:1)"),
            "{all}"
        );
    }

    #[test]
    fn valid_document_has_no_problem() {
        assert!(run("name: x\nthreads: 2\nmode: least_connections\n").is_empty());
    }

    #[test]
    fn unknown_key_far_from_any_lists_known_keys() {
        let errs = run("name: x\nzzzzzz: 1\n");
        assert!(errs[0].contains("known keys"), "{errs:?}");
    }
}
