//! `pages`: time zone, branding, template files.

use schemars::JsonSchema;
use serde::Deserialize;

/// The pages ecluse writes itself.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PagesFile {
    /// IANA time zone of the times pages show (`Europe/Paris`, `America/Cayenne`,
    /// `Indian/Reunion`). Default `Europe/Paris`. JSON answers carry RFC 3339 with this
    /// zone's offset.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Name, logo, colours and help link shown on every page.
    #[serde(default)]
    pub brand: Option<BrandFile>,
    /// minijinja template files replacing built-in pages, by page (paths relative to the
    /// policy file). Reloaded with the policy; each is rendered once with sample values
    /// at load, so a broken one is refused by `ecluse check`.
    #[serde(default)]
    pub templates: Option<PageTemplatesFile>,
}

/// Branding shared by every page.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrandFile {
    /// The workspace's name, at the top of every page and in the tab title (default
    /// `ENT`). A room's `brand` overrides it on its queue pages.
    #[serde(default)]
    pub name: Option<String>,
    /// Logo image (`https://…` or a path on this site such as `/static/logo.svg`),
    /// shown instead of the name; its alternative text is the name. Serve it from a
    /// path outside the waiting room (`inside_paths`).
    #[serde(default)]
    pub logo_url: Option<String>,
    /// A help page linked at the bottom of every page (`https://…` or `/path`).
    #[serde(default)]
    pub help_url: Option<String>,
    /// Colour of links, the position and buttons on light backgrounds (`#rrggbb`);
    /// must reach a 4.5:1 contrast on them (WCAG AA). Default `#1d4f91`.
    #[serde(default)]
    pub accent: Option<String>,
    /// The same colour in dark mode; must reach 4.5:1 on dark backgrounds. Default `#8fb8ff`.
    #[serde(default)]
    pub accent_dark: Option<String>,
}

/// Template files replacing built-in pages. Each may `{% extends "layout" %}`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageTemplatesFile {
    /// The frame of every page (head, colours, header, footer with the help link and
    /// the request id).
    #[serde(default)]
    pub layout: Option<String>,
    /// The queue page (a room's `template_file` overrides it for that room).
    #[serde(default)]
    pub queue: Option<String>,
    /// Before a scheduled opening's pre-queue window.
    #[serde(default)]
    pub not_open_yet: Option<String>,
    /// 429, rate limited.
    #[serde(default)]
    pub rate_limited: Option<String>,
    /// 503, a feature switched off.
    #[serde(default)]
    pub feature_off: Option<String>,
    /// 503, load shed (origin at capacity, uploads buffer full).
    #[serde(default)]
    pub shed: Option<String>,
    /// 502 and 504, the origin failed or was too slow.
    #[serde(default)]
    pub origin_error: Option<String>,
    /// 400, a malformed request.
    #[serde(default)]
    pub bad_request: Option<String>,
    /// Other errors (404, 411, 413, 500).
    #[serde(default)]
    pub error: Option<String>,
}

impl PageTemplatesFile {
    /// (page name, file) for each template given.
    pub fn entries(&self) -> Vec<(&'static str, &str)> {
        [
            ("layout", &self.layout),
            ("queue", &self.queue),
            ("not_open_yet", &self.not_open_yet),
            ("rate_limited", &self.rate_limited),
            ("feature_off", &self.feature_off),
            ("shed", &self.shed),
            ("origin_error", &self.origin_error),
            ("bad_request", &self.bad_request),
            ("error", &self.error),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}
