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
    let mut out = Vec::new();
    let mut w = Walker {
        root: schema,
        out: &mut out,
    };
    w.walk(root, schema, "");
    out
}

struct Walker<'a> {
    root: &'a Value,
    out: &'a mut Vec<Diagnostic>,
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

    fn walk(&mut self, node: &SNode, schema: &'a Value, path: &str) {
        let schema = self.resolve(schema);
        if schema.as_bool() == Some(true) {
            return;
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
                self.check_enum(node, &consts, path);
                return;
            }
            let fitting: Vec<&Value> = branches
                .iter()
                .filter(|b| self.shallow_ok(&node.node, b))
                .collect();
            match fitting.len() {
                0 => {
                    let want = self.describe(schema);
                    self.err(
                        node.pos,
                        path,
                        format!("expected {want}, found {}", node.node.kind()),
                    );
                }
                1 => self.walk(node, fitting[0], path),
                _ => {
                    // Keep the branch that explains the node with the fewest problems.
                    let mut best: Option<Vec<Diagnostic>> = None;
                    for b in fitting {
                        let mut trial = Vec::new();
                        let mut w = Walker {
                            root: self.root,
                            out: &mut trial,
                        };
                        w.walk(node, b, path);
                        if best.as_ref().is_none_or(|bst| trial.len() < bst.len()) {
                            best = Some(trial);
                        }
                    }
                    self.out.extend(best.unwrap_or_default());
                }
            }
            return;
        }

        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            let names: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
            if matches!(node.node, Node::Null) && values.iter().any(Value::is_null) {
                return;
            }
            self.check_enum(node, &names, path);
            return;
        }
        if let Some(c) = schema.get("const").and_then(Value::as_str) {
            self.check_enum(node, &[c], path);
            return;
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
            return;
        }

        match &node.node {
            Node::Map(entries) => self.walk_map(node, entries, schema, path),
            Node::Seq(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.walk(item, item_schema, &format!("{path}[{i}]"));
                    }
                }
            }
            Node::Int(i) => {
                if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                    if (*i as f64) < min {
                        self.err(node.pos, path, format!("must be at least {min}, found {i}"));
                    }
                }
                if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                    if (*i as f64) > max {
                        self.err(node.pos, path, format!("must be at most {max}, found {i}"));
                    }
                }
            }
            _ => {}
        }
    }

    fn check_enum(&mut self, node: &SNode, names: &[&str], path: &str) {
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
            return;
        };
        if names.contains(&text.as_str()) {
            return;
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
    }

    fn walk_map(
        &mut self,
        node: &SNode,
        entries: &[(String, Pos, SNode)],
        schema: &'a Value,
        path: &str,
    ) {
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let mut seen: Vec<(&str, Pos)> = Vec::with_capacity(entries.len());
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
                continue;
            }
            seen.push((key, *kpos));
            if let Some(p) = props.and_then(|p| p.get(key.as_str())) {
                self.walk(value, p, &sub);
                continue;
            }
            match additional {
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
                }
                Some(s @ Value::Object(_)) => self.walk(value, s, &sub),
                _ => {}
            }
        }
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for r in required.iter().filter_map(Value::as_str) {
                if !entries.iter().any(|(k, _, _)| k == r) {
                    self.err(node.pos, path, format!("missing required key `{r}`"));
                }
            }
        }
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
