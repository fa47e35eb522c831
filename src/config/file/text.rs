//! Values kept as the text ops wrote (durations, drain rates, sizes), parsed by `runtime`
//! so that a bad value is reported with the others.

use schemars::JsonSchema;
use serde::Deserialize;

/// A duration written with its unit (`250ms`, `30s`, `10m`, `1h`, `1d`). Kept as text
/// here; `runtime` parses it so that a bad value is reported with the others.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DurationText(pub String);

impl JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|min|h|d)$",
            "description": "A duration with its unit: 250ms, 30s, 10m, 1h, 1d.",
            "x-ecluse-expected": "a duration like `30s`"
        })
    }
}

/// A drain grace: a duration (`30s`, `0s` for at once) or `never`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DrainText(pub String);

impl JsonSchema for DrainText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Drain".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(never|[0-9]+(\\.[0-9]+)?(ms|s|m|min|h|d))$",
            "description": "A grace with its unit (30s, 0s for at once), or `never`.",
            "x-ecluse-expected": "a duration like `30s`, or `never`"
        })
    }
}

/// A byte size with its unit (`512KiB`, `64MiB`, `2GiB`; `KB`/`MB`/`GB` are powers of
/// ten). Kept as text here; `runtime` parses it so that a bad value is reported with the others.
/// A bare number of bytes (`500`) is accepted too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeText(pub String);

impl<'de> Deserialize<'de> for SizeText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SizeText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size like `64MiB`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SizeText, E> {
                Ok(SizeText(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SizeText, E> {
                Ok(SizeText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SizeText, E> {
                Ok(SizeText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for SizeText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Size".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["string", "integer"],
            "minimum": 0,
            "pattern": "^[0-9]+ *(B|KB|kB|MB|GB|KiB|MiB|GiB)?$",
            "description": "A byte size: 512KiB, 64MiB, 2GiB (KB/MB/GB are powers of ten).",
            "x-ecluse-expected": "a size like `64MiB`"
        })
    }
}
