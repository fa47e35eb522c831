//! The one minijinja environment every page ecluse writes comes from: a shared layout
//! (`layout`), the queue, the "not open yet" page and the error pages, each replaceable
//! by ops with a template file (`pages.templates`), plus the branding they all share.
//!
//! A config's `Pages` is built once at load: every template is compiled and rendered
//! with sample values in both languages, so a broken file is refused by `ecluse check`
//! and by a reload (which keeps the old pages), never discovered in front of pupils.

use std::sync::{Arc, OnceLock};

use minijinja::{AutoEscape, Environment, Value};
use serde::Serialize;

use super::time::Zone;
use super::{Lang, Problem};

pub const LAYOUT: &str = include_str!("templates/layout.html.j2");
pub const QUEUE: &str = include_str!("templates/queue.html.j2");
pub const NOT_OPEN_YET: &str = include_str!("templates/not_open_yet.html.j2");
pub const PROBLEM: &str = include_str!("templates/problem.html.j2");

/// A page ecluse writes; its `name` is both the template's name (for `{% extends %}`)
/// and the key under `pages.templates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageKind {
    /// The frame of every page (head, colours, header, footer).
    Layout,
    Queue,
    NotOpenYet,
    RateLimited,
    FeatureOff,
    Shed,
    OriginError,
    BadRequest,
    /// 404, 411, 413, 500.
    Error,
}

impl PageKind {
    pub const ALL: [PageKind; 9] = [
        PageKind::Layout,
        PageKind::Queue,
        PageKind::NotOpenYet,
        PageKind::RateLimited,
        PageKind::FeatureOff,
        PageKind::Shed,
        PageKind::OriginError,
        PageKind::BadRequest,
        PageKind::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PageKind::Layout => "layout",
            PageKind::Queue => "queue",
            PageKind::NotOpenYet => "not_open_yet",
            PageKind::RateLimited => "rate_limited",
            PageKind::FeatureOff => "feature_off",
            PageKind::Shed => "shed",
            PageKind::OriginError => "origin_error",
            PageKind::BadRequest => "bad_request",
            PageKind::Error => "error",
        }
    }

    pub fn from_name(s: &str) -> Option<PageKind> {
        PageKind::ALL.into_iter().find(|k| k.name() == s)
    }

    fn builtin(self) -> &'static str {
        match self {
            PageKind::Layout => LAYOUT,
            PageKind::Queue => QUEUE,
            PageKind::NotOpenYet => NOT_OPEN_YET,
            _ => PROBLEM,
        }
    }
}

/// How the pages look: name, logo, colours, help link (`pages.brand`).
#[derive(Debug, Clone, Serialize)]
pub struct Brand {
    /// Shown at the top of every page and in the tab title.
    pub name: String,
    pub logo_url: Option<String>,
    pub help_url: Option<String>,
    /// Links, the position and buttons on light backgrounds (`#rrggbb`).
    pub accent: String,
    /// The same on dark backgrounds (`prefers-color-scheme: dark`).
    pub accent_dark: String,
}

pub const DEFAULT_ACCENT: &str = "#1d4f91";
pub const DEFAULT_ACCENT_DARK: &str = "#8fb8ff";
/// The backgrounds an accent is drawn on (page and card), light and dark.
const LIGHT_BACKGROUNDS: [&str; 2] = ["#eef2f8", "#ffffff"];
const DARK_BACKGROUNDS: [&str; 2] = ["#14171c", "#1e232b"];

impl Default for Brand {
    fn default() -> Brand {
        Brand {
            name: "ENT".into(),
            logo_url: None,
            help_url: None,
            accent: DEFAULT_ACCENT.into(),
            accent_dark: DEFAULT_ACCENT_DARK.into(),
        }
    }
}

/// `#rgb` or `#rrggbb` → RGB. Anything else is refused (the value lands in CSS).
pub fn parse_colour(s: &str) -> Result<[u8; 3], String> {
    let hex = s
        .strip_prefix('#')
        .filter(|h| (h.len() == 3 || h.len() == 6) && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("`{s}` is not a colour like `#1d4f91`"))?;
    let digit = |i: usize| u8::from_str_radix(&hex[i..i + 1], 16).unwrap_or(0);
    Ok(if hex.len() == 3 {
        [digit(0) * 17, digit(1) * 17, digit(2) * 17]
    } else {
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0);
        [byte(0), byte(2), byte(4)]
    })
}

/// WCAG 2.1 contrast ratio of two colours (1 to 21).
pub fn contrast(a: [u8; 3], b: [u8; 3]) -> f64 {
    fn lum(c: [u8; 3]) -> f64 {
        let ch = |v: u8| {
            let s = f64::from(v) / 255.0;
            if s <= 0.03928 {
                s / 12.92
            } else {
                ((s + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * ch(c[0]) + 0.7152 * ch(c[1]) + 0.0722 * ch(c[2])
    }
    let (x, y) = (lum(a), lum(b));
    (x.max(y) + 0.05) / (x.min(y) + 0.05)
}

/// Check an accent colour: a colour, readable (WCAG AA, 4.5:1) on the backgrounds it
/// is drawn on. Returns the normalised `#rrggbb`.
pub fn check_accent(s: &str, dark: bool) -> Result<String, String> {
    let c = parse_colour(s.trim())?;
    let bgs = if dark {
        DARK_BACKGROUNDS
    } else {
        LIGHT_BACKGROUNDS
    };
    for bg in bgs {
        let ratio = contrast(c, parse_colour(bg)?);
        if ratio < 4.5 {
            return Err(format!(
                "`{s}` has a contrast of {ratio:.2}:1 on the {} background {bg}; text needs 4.5:1 (WCAG AA)",
                if dark { "dark" } else { "light" }
            ));
        }
    }
    Ok(format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]))
}

/// A link ops put on every page: `https://…`, `http://…` or a path on this site
/// (`/aide`). Never `javascript:` or `data:`, never a protocol-relative `//host`.
pub fn check_url(s: &str) -> Result<String, String> {
    let ok_scheme = s.starts_with("https://")
        || s.starts_with("http://")
        || (s.starts_with('/') && !s.starts_with("//"));
    if !ok_scheme {
        return Err(format!(
            "`{s}` must start with `https://` or `/` (a path on this site)"
        ));
    }
    if s.len() > 2048 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a URL without spaces or control characters, at most 2048 bytes".into());
    }
    Ok(s.to_string())
}

/// A `Retry-After` in words: "7 secondes", "1 minute", "60 minutes".
pub fn delay_words(secs: u64, lang: Lang) -> String {
    let (n, unit_fr, unit_en) = if secs < 120 {
        (secs, "seconde", "second")
    } else {
        (secs.div_ceil(60), "minute", "minute")
    };
    let plural = if n > 1 { "s" } else { "" };
    match lang {
        Lang::Fr => format!("{n} {unit_fr}{plural}"),
        Lang::En => format!("{n} {unit_en}{plural}"),
    }
}

/// Words shared by every page.
#[derive(Serialize)]
struct Ui {
    help: &'static str,
    request_id: &'static str,
    home: &'static str,
}

fn ui(lang: Lang) -> Ui {
    match lang {
        Lang::Fr => Ui {
            help: "Besoin d'aide ?",
            request_id: "Numéro à donner à votre professeur si besoin :",
            home: "Retour à l'accueil",
        },
        Lang::En => Ui {
            help: "Need help?",
            request_id: "Number to give your teacher if needed:",
            home: "Back to the home page",
        },
    }
}

/// What every template can use.
#[derive(Serialize)]
pub(crate) struct Common<'a> {
    pub lang: &'static str,
    pub brand: &'a Brand,
    ui: Ui,
    pub request_id: Option<&'a str>,
    pub home_url: &'static str,
    /// The page's kind name (`rate_limited`, `queue`…), for templates shared by several.
    pub page: &'static str,
}

impl Pages {
    pub(crate) fn common<'a>(
        &'a self,
        kind: PageKind,
        lang: Lang,
        request_id: Option<&'a str>,
    ) -> Common<'a> {
        Common {
            lang: lang.code(),
            brand: &self.brand,
            ui: ui(lang),
            request_id,
            home_url: "/",
            page: kind.name(),
        }
    }
}

#[derive(Serialize)]
struct ProblemTexts {
    title: String,
    what: String,
    why: String,
    next: String,
    retry: &'static str,
    home: &'static str,
    countdown: &'static str,
}

#[derive(Serialize)]
struct ProblemContext<'a> {
    #[serde(flatten)]
    common: Common<'a>,
    t: ProblemTexts,
    status: u16,
    code: &'static str,
    retry_after: Option<u64>,
    auto_retry: bool,
}

/// All the pages of one config.
#[derive(Clone)]
pub struct Pages {
    pub(crate) env: Environment<'static>,
    pub brand: Brand,
    pub zone: Zone,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field("brand", &self.brand)
            .field("zone", &self.zone)
            .finish()
    }
}

/// A template that does not compile or fails on sample values.
#[derive(Debug, thiserror::Error)]
#[error("template `{kind}`: {message}")]
pub struct TemplateError {
    pub kind: &'static str,
    pub message: String,
}

fn new_env() -> Environment<'static> {
    let mut env = Environment::new();
    // Everything is HTML-escaped, whatever the file is called.
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    env
}

fn err(kind: PageKind, e: impl std::fmt::Display) -> TemplateError {
    TemplateError {
        kind: kind.name(),
        message: e.to_string(),
    }
}

impl Pages {
    /// The pages with ops' `overrides` (kind → template source) over the built-in ones.
    pub fn build(
        overrides: &[(PageKind, String)],
        brand: Brand,
        zone: Zone,
    ) -> Result<Pages, TemplateError> {
        let mut env = new_env();
        for kind in PageKind::ALL {
            let source = overrides
                .iter()
                .rev()
                .find(|(k, _)| *k == kind)
                .map(|(_, s)| s.clone())
                .unwrap_or_else(|| kind.builtin().to_string());
            env.add_template_owned(kind.name(), source)
                .map_err(|e| err(kind, e))?;
        }
        let pages = Pages { env, brand, zone };
        pages.check()?;
        Ok(pages)
    }

    /// A room's pages: its own queue template (`waiting_rooms.*.template_file`) and
    /// name (`brand`), over the config's.
    pub fn for_room(
        &self,
        queue: Option<&str>,
        name: Option<&str>,
    ) -> Result<Pages, TemplateError> {
        let mut p = self.clone();
        if let Some(n) = name {
            p.brand.name = n.to_string();
        }
        if let Some(src) = queue {
            p.env
                .add_template_owned(PageKind::Queue.name(), src.to_string())
                .map_err(|e| err(PageKind::Queue, e))?;
            p.check()?;
        }
        Ok(p)
    }

    /// The built-in pages (default brand, `Europe/Paris`): used before a config exists
    /// and when an ops template fails at run time.
    pub fn builtin() -> Arc<Pages> {
        static P: OnceLock<Arc<Pages>> = OnceLock::new();
        P.get_or_init(|| {
            Arc::new(
                Pages::build(&[], Brand::default(), Zone::default_zone()).unwrap_or_else(|e| {
                    // The built-in templates are tested; this cannot happen in a release.
                    log::error!("built-in page templates are broken: {e}");
                    Pages {
                        env: new_env(),
                        brand: Brand::default(),
                        zone: Zone::default_zone(),
                    }
                }),
            )
        })
        .clone()
    }

    /// Render every page once with sample values, in both languages, with and without a
    /// request id: a template failing at run time is refused at load.
    fn check(&self) -> Result<(), TemplateError> {
        for lang in [Lang::Fr, Lang::En] {
            for rid in [None, Some("0123456789abcdef")] {
                for kind in PageKind::ALL {
                    self.try_render_sample(kind, lang, rid)
                        .map_err(|e| err(kind, e))?;
                }
            }
        }
        Ok(())
    }

    fn try_render_sample(
        &self,
        kind: PageKind,
        lang: Lang,
        rid: Option<&str>,
    ) -> Result<String, String> {
        match kind {
            // The layout is checked through every page that extends it.
            PageKind::Layout => Ok(String::new()),
            PageKind::Queue => {
                let mut v = super::queue::QueueView::sample();
                v.lang = lang;
                self.try_render_queue(&v, rid)?;
                v.phase = "prequeue";
                v.draw = true;
                v.position = None;
                v.position_text.clear();
                self.try_render_queue(&v, rid)
            }
            PageKind::NotOpenYet => {
                let mut v = super::queue::NotOpenView::sample();
                v.lang = lang;
                self.try_render_not_open(&v, rid)
            }
            PageKind::FeatureOff => {
                self.try_render_feature_off(lang, Some("visio"), "message", 300, rid)?;
                self.try_render_feature_off(lang, None, "message", 300, rid)
            }
            PageKind::RateLimited => {
                self.try_render_problem(Problem::RateLimited, lang, Some(2), rid)?;
                self.try_render_problem(Problem::RateLimited, lang, None, rid)
            }
            PageKind::Shed => self.try_render_problem(Problem::OriginBusy, lang, Some(2), rid),
            PageKind::OriginError => {
                self.try_render_problem(Problem::BadGateway, lang, None, rid)?;
                self.try_render_problem(Problem::GatewayTimeout, lang, None, rid)
            }
            PageKind::BadRequest => self.try_render_problem(Problem::BadRequest, lang, None, rid),
            PageKind::Error => self.try_render_problem(Problem::NoRoute, lang, None, rid),
        }
    }

    pub(crate) fn render_value(&self, kind: PageKind, ctx: Value) -> Result<String, String> {
        let t = self
            .env
            .get_template(kind.name())
            .map_err(|e| e.to_string())?;
        t.render(ctx).map_err(|e| format!("{e:#}"))
    }

    /// Render with ops' template; when it fails at run time (it rendered at load, so a
    /// value it did not expect), log and use the built-in one rather than answer nothing.
    pub(crate) fn render_or_builtin(
        &self,
        kind: PageKind,
        f: impl Fn(&Pages) -> Result<String, String>,
    ) -> String {
        match f(self) {
            Ok(html) => html,
            Err(e) => {
                log::error!(
                    "page template `{}` failed: {e}; using the built-in page",
                    kind.name()
                );
                let mut b = (*Pages::builtin()).clone();
                b.brand = self.brand.clone();
                b.zone = self.zone.clone();
                f(&b).unwrap_or_default()
            }
        }
    }

    fn try_render_problem(
        &self,
        problem: Problem,
        lang: Lang,
        retry_after: Option<u64>,
        rid: Option<&str>,
    ) -> Result<String, String> {
        let words = problem.words(lang);
        let auto_retry = problem.auto_retry() && retry_after.is_some();
        let next = match retry_after.filter(|_| auto_retry) {
            Some(n) => words.next.replace("{n}", &delay_words(n, lang)),
            None => words.next_plain.to_string(),
        };
        let kind = problem.kind();
        let shows_home = matches!(
            problem,
            Problem::BadRequest | Problem::NoRoute | Problem::BadGateway | Problem::GatewayTimeout
        );
        let (retry, countdown, home) = match lang {
            Lang::Fr => (
                "Réessayer maintenant",
                "Nouvel essai dans {n} s",
                "Retour à l'accueil",
            ),
            Lang::En => (
                "Try again now",
                "Trying again in {n} s",
                "Back to the home page",
            ),
        };
        let ctx = ProblemContext {
            common: self.common(kind, lang, rid),
            t: ProblemTexts {
                title: words.title.to_string(),
                what: words.what.to_string(),
                why: words.why.to_string(),
                next,
                retry: if matches!(
                    problem,
                    Problem::NoBodySpace
                        | Problem::PayloadTooLarge
                        | Problem::LengthRequired
                        | Problem::NoRoute
                        | Problem::BadRequest
                        | Problem::Misdirected
                ) {
                    ""
                } else {
                    retry
                },
                home: if shows_home { home } else { "" },
                countdown,
            },
            status: problem.status(),
            code: problem.code(),
            retry_after,
            auto_retry,
        };
        self.render_value(kind, Value::from_serialize(&ctx))
    }

    /// The HTML of a problem's page.
    pub fn render_problem(
        &self,
        problem: Problem,
        lang: Lang,
        retry_after: Option<u64>,
        rid: Option<&str>,
    ) -> String {
        self.render_or_builtin(problem.kind(), |p| {
            p.try_render_problem(problem, lang, retry_after, rid)
        })
    }

    fn try_render_feature_off(
        &self,
        lang: Lang,
        display_name: Option<&str>,
        message: &str,
        retry_after: u64,
        rid: Option<&str>,
    ) -> Result<String, String> {
        let (title, why, next, home) = match (lang, display_name) {
            (Lang::Fr, Some(n)) => (format!("« {n} » est en pause"), "Ce n'est pas de votre faute : nous l'avons arrêté un moment pour que le reste du site reste rapide.", "Vos cours et vos devoirs restent accessibles. Revenez un peu plus tard.", "Retour à l'accueil"),
            (Lang::Fr, None) => ("Ce service est en pause".to_string(), "Ce n'est pas de votre faute : nous l'avons arrêté un moment pour que le reste du site reste rapide.", "Vos cours et vos devoirs restent accessibles. Revenez un peu plus tard.", "Retour à l'accueil"),
            (Lang::En, Some(n)) => (format!("“{n}” is paused"), "It is not your fault: we stopped it for a while so that the rest of the site stays fast.", "Your lessons and homework are still there. Come back a little later.", "Back to the home page"),
            (Lang::En, None) => ("This service is paused".to_string(), "It is not your fault: we stopped it for a while so that the rest of the site stays fast.", "Your lessons and homework are still there. Come back a little later.", "Back to the home page"),
        };
        let ctx = ProblemContext {
            common: self.common(PageKind::FeatureOff, lang, rid),
            t: ProblemTexts {
                title,
                what: message.to_string(),
                why: why.to_string(),
                next: next.to_string(),
                retry: "",
                home,
                countdown: "",
            },
            status: 503,
            code: "feature_off",
            retry_after: Some(retry_after),
            auto_retry: false,
        };
        self.render_value(PageKind::FeatureOff, Value::from_serialize(&ctx))
    }

    /// The HTML of a switched-off feature's page.
    pub fn render_feature_off(
        &self,
        lang: Lang,
        display_name: Option<&str>,
        message: &str,
        retry_after: u64,
        rid: Option<&str>,
    ) -> String {
        self.render_or_builtin(PageKind::FeatureOff, |p| {
            p.try_render_feature_off(lang, display_name, message, retry_after, rid)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_page_renders_from_the_layout() {
        let p = Pages::builtin();
        for problem in [
            Problem::RateLimited,
            Problem::OriginBusy,
            Problem::BadGateway,
            Problem::GatewayTimeout,
            Problem::BadRequest,
            Problem::NoRoute,
        ] {
            for lang in [Lang::Fr, Lang::En] {
                let html = p.render_problem(problem, lang, Some(7), Some("rid-42"));
                assert!(html.contains(&format!("lang=\"{}\"", lang.code())));
                assert!(html.contains("prefers-color-scheme:dark"), "{problem:?}");
                assert!(html.contains("rid-42"), "request id in the footer");
                let title = problem.words(lang).title.replace('\'', "&#x27;");
                assert!(html.contains(&title), "{problem:?} {lang:?}");
            }
        }
        let html = p.render_problem(Problem::RateLimited, Lang::Fr, Some(7), None);
        assert!(html.contains(r#"<meta http-equiv="refresh" content="7">"#));
        assert!(html.contains("dans 7 secondes"));
        assert_eq!(delay_words(3593, Lang::Fr), "60 minutes");
        assert_eq!(delay_words(1, Lang::En), "1 second");
        assert!(!html.contains("class=\"rid\""), "no request id, no line");
        let html = p.render_feature_off(Lang::Fr, Some("La visio"), "msg", 300, None);
        assert!(html.contains("« La visio » est en pause"), "{html}");
    }

    #[test]
    fn branding_is_escaped_and_checked() {
        let brand = Brand {
            name: "<b>Mon ENT</b>".into(),
            logo_url: Some("/logo.png\" onerror=\"x".into()),
            help_url: Some("https://aide.example.fr/".into()),
            ..Brand::default()
        };
        let p = Pages::build(&[], brand, Zone::default_zone()).expect("pages");
        let html = p.render_problem(Problem::BadGateway, Lang::Fr, None, None);
        assert!(!html.contains("<b>Mon ENT</b>"));
        assert!(!html.contains("\" onerror=\""));
        // minijinja escapes `/` too (`&#x2f;`), which attributes decode.
        assert!(
            html.contains("https:&#x2f;&#x2f;aide.example.fr&#x2f;"),
            "{html}"
        );
        assert!(check_accent("#1d4f91", false).is_ok());
        assert!(check_accent("#ffff00", false).is_err(), "yellow on white");
        assert!(check_accent("#1d4f91", true).is_err(), "dark blue on dark");
        assert!(check_accent("red;}body{display:none", false).is_err());
        assert_eq!(check_accent("#FFF", true).as_deref(), Ok("#ffffff"));
        assert!(check_url("javascript:alert(1)").is_err());
        assert!(check_url("//evil.example/").is_err());
        assert!(check_url("/aide").is_ok());
        assert!(check_url("https://x.fr/a b").is_err());
    }

    #[test]
    fn broken_overrides_are_refused_with_their_name() {
        for (kind, src) in [
            (PageKind::RateLimited, "{% if %}"),
            (PageKind::Shed, "{{ t.title | nosuchfilter }}"),
            (
                PageKind::Layout,
                "<p>{{ brand.name | nosuchfilter }}</p>{% block content %}{% endblock %}",
            ),
        ] {
            let e = Pages::build(
                &[(kind, src.into())],
                Brand::default(),
                Zone::default_zone(),
            )
            .expect_err("refused");
            assert!(!e.message.is_empty());
            if kind != PageKind::Layout {
                assert_eq!(e.kind, kind.name());
            }
        }
        let ok = Pages::build(
            &[(
                PageKind::BadRequest,
                "{% extends \"layout\" %}{% block content %}<p>{{ t.what }}</p>{% endblock %}"
                    .into(),
            )],
            Brand::default(),
            Zone::default_zone(),
        )
        .expect("an override extending the layout");
        let html = ok.render_problem(Problem::BadRequest, Lang::En, None, None);
        assert!(html.contains("<p>Your browser sent"));
        assert!(html.contains("prefers-color-scheme"), "from the layout");
    }
}
