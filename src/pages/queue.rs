//! The queue page (HTML through a minijinja template, built in or supplied by ops) and
//! the JSON status the page and mobile apps poll.

use std::sync::{Arc, OnceLock};

use minijinja::{context, AutoEscape, Environment};
use serde::Serialize;

use super::Lang;

/// The built-in template, good enough to ship; ops may replace it per room.
pub const BUILTIN: &str = include_str!("queue.html.j2");

/// A compiled queue template.
pub struct QueueTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for QueueTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueTemplate")
    }
}

impl QueueTemplate {
    pub fn compile(source: &str) -> Result<QueueTemplate, String> {
        let mut env = Environment::new();
        // Everything is HTML-escaped, whatever the file is called.
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        env.add_template_owned("queue", source.to_string())
            .map_err(|e| e.to_string())?;
        let t = QueueTemplate { env };
        // Render once with sample values so that a template referring to unknown filters
        // or failing at run time is refused at load, not in front of students.
        t.render(&QueueView::sample()).map(|_| t)
    }

    pub fn builtin() -> Arc<QueueTemplate> {
        static T: OnceLock<Arc<QueueTemplate>> = OnceLock::new();
        T.get_or_init(|| {
            Arc::new(QueueTemplate::compile(BUILTIN).unwrap_or_else(|e| {
                // The built-in template is tested; this cannot happen in a release.
                log::error!("built-in queue template is broken: {e}");
                QueueTemplate {
                    env: Environment::new(),
                }
            }))
        })
        .clone()
    }

    pub fn render(&self, v: &QueueView) -> Result<String, String> {
        let tmpl = self.env.get_template("queue").map_err(|e| e.to_string())?;
        tmpl.render(context! {
            lang => v.lang.code(),
            t => texts(v.lang, v.refresh_s),
            position => v.position,
            position_text => v.position_text,
            eta_text => v.eta_text,
            updated_at => v.updated_at,
            poll_ms => v.poll_ms,
            refresh_s => v.refresh_s,
            status_url => v.status_url,
            room => v.room,
            paused => v.paused,
            opens_at => v.opens_at,
            brand => v.brand,
            request_id => v.request_id,
        })
        .map_err(|e| e.to_string())
    }
}

/// Check a template supplied by ops (used by config validation).
pub fn compile_check(source: &str) -> Result<(), String> {
    QueueTemplate::compile(source).map(|_| ())
}

/// What the queue page shows.
#[derive(Debug, Clone)]
pub struct QueueView {
    pub lang: Lang,
    pub position: Option<u64>,
    pub position_text: String,
    pub eta_text: String,
    pub updated_at: String,
    pub poll_ms: u64,
    pub refresh_s: u64,
    pub status_url: String,
    pub room: String,
    pub paused: bool,
    pub opens_at: String,
    pub brand: String,
    /// This request's id, shown small for a pupil to quote (`policy::request_id`).
    pub request_id: String,
}

impl QueueView {
    fn sample() -> QueueView {
        QueueView {
            lang: Lang::Fr,
            position: Some(1234),
            position_text: "environ 1 300".into(),
            eta_text: "4 min".into(),
            updated_at: "08:00:00".into(),
            poll_ms: 10_000,
            refresh_s: 20,
            status_url: "/.ecluse/queue/status?room=x".into(),
            room: "x".into(),
            paused: false,
            opens_at: String::new(),
            brand: "ENT".into(),
            request_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
        }
    }
}

#[derive(Serialize)]
struct Texts {
    title: &'static str,
    intro: &'static str,
    position_label: &'static str,
    ahead_label: &'static str,
    wait_label: &'static str,
    updated_label: &'static str,
    estimating: &'static str,
    noscript: String,
    admitted: &'static str,
    paused: &'static str,
    lost: &'static str,
    opens_label: &'static str,
}

fn texts(lang: Lang, refresh_s: u64) -> Texts {
    match lang {
        Lang::Fr => Texts {
            title: "Vous êtes dans la file d'attente",
            intro: "L'ENT accueille beaucoup d'élèves en ce moment. Les places sont attribuées dans l'ordre d'arrivée et cette page se met à jour toute seule. Gardez cet onglet ouvert : ouvrir d'autres onglets ne fait pas avancer plus vite.",
            position_label: "Votre position",
            ahead_label: "personnes devant vous",
            wait_label: "Attente estimée",
            updated_label: "Mis à jour à",
            estimating: "estimation en cours…",
            noscript: format!("Cette page se recharge toute seule toutes les {refresh_s} secondes."),
            admitted: "C'est votre tour ! Chargement…",
            paused: "Les entrées sont momentanément suspendues. Vous gardez votre place.",
            lost: "Votre place a expiré ; rechargez la page pour en reprendre une.",
            opens_label: "Ouverture à",
        },
        Lang::En => Texts {
            title: "You are in the queue",
            intro: "The ENT is welcoming many students right now. Places are given in order of arrival and this page updates by itself. Keep this tab open: opening more tabs does not make it faster.",
            position_label: "Your position",
            ahead_label: "people ahead of you",
            wait_label: "Estimated wait",
            updated_label: "Updated at",
            estimating: "estimating…",
            noscript: format!("This page reloads by itself every {refresh_s} seconds."),
            admitted: "It's your turn! Loading…",
            paused: "Admissions are paused for a moment. You keep your place.",
            lost: "Your place has expired; reload the page to get a new one.",
            opens_label: "Opens at",
        },
    }
}

/// Position as shown: exact below 100, then rounded ("environ 1 300", "about 1,300").
pub fn position_text(lang: Lang, position: Option<u64>) -> String {
    let Some(p) = position else {
        return String::new();
    };
    let r = crate::policy::waiting_room::round_position(p);
    let digits = group_thousands(r, if lang == Lang::Fr { '\u{202f}' } else { ',' });
    if r == p {
        digits
    } else if lang == Lang::Fr {
        format!("environ {digits}")
    } else {
        format!("about {digits}")
    }
}

fn group_thousands(n: u64, sep: char) -> String {
    let mut digits = itoa::Buffer::new();
    let s = digits.format(n);
    let mut out = String::with_capacity(s.len() + s.len() / 3 * sep.len_utf8());
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(sep);
        }
        out.push(c);
    }
    out
}

/// Wait as shown: honest and coarse ("moins d'une minute", "4 min", "about 1 h 20").
pub fn eta_text(lang: Lang, eta: Option<std::time::Duration>) -> String {
    let Some(d) = eta else {
        return String::new();
    };
    let mins = d.as_secs().div_ceil(60);
    match (lang, mins) {
        (Lang::Fr, 0..=1) => "moins d'une minute".into(),
        (Lang::En, 0..=1) => "less than a minute".into(),
        (_, 2..=59) => {
            let mut t = String::with_capacity(6);
            t.push_str(itoa::Buffer::new().format(mins));
            t.push_str(" min");
            t
        }
        (Lang::Fr, m) => format!("environ {} h {:02}", m / 60, m % 60),
        (Lang::En, m) => format!("about {} h {:02}", m / 60, m % 60),
    }
}

/// `HH:MM:SS` (UTC+0 unless the TZ offset is known; we show the server's UTC time with
/// the offset ops configure later).
pub fn clock_text(now_ms: u64) -> String {
    let s = (now_ms / 1000) % 86_400;
    let mut out = String::with_capacity(8);
    for (i, n) in [s / 3600, (s % 3600) / 60, s % 60].into_iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        // Two digits each (hours < 24).
        out.push(char::from(b'0' + (n / 10) as u8));
        out.push(char::from(b'0' + (n % 10) as u8));
    }
    out
}

/// The JSON status of a ticket.
#[derive(Debug, Serialize)]
pub struct Status<'a> {
    pub room: &'a str,
    /// `waiting`, `admitted` or `lost`.
    pub state: &'static str,
    pub position: Option<u64>,
    pub position_text: String,
    pub eta_seconds: Option<u64>,
    pub eta_text: String,
    pub updated_at: String,
    pub poll_after_ms: u64,
    pub paused: bool,
    pub opens_at: Option<String>,
    /// The id of the request this answers (`X-Request-Id`).
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_template_renders_and_escapes() {
        let t = QueueTemplate::compile(BUILTIN).expect("builtin compiles");
        let mut v = QueueView::sample();
        v.room = "\"><script>alert(1)</script>".into();
        v.brand = "<b>ENT</b>".into();
        let html = t.render(&v).expect("render");
        assert!(html.contains("lang=\"fr\""));
        assert!(html.contains("aria-live"));
        assert!(html.contains("http-equiv=\"refresh\""));
        assert!(!html.contains("<script>alert(1)"), "escaped");
        assert!(!html.contains("<b>ENT</b>"), "escaped");
        v.lang = Lang::En;
        v.position = None;
        let html = t.render(&v).expect("render en");
        assert!(html.contains("lang=\"en\""));
    }

    #[test]
    fn broken_templates_are_refused() {
        assert!(compile_check("{% if %}").is_err());
        assert!(compile_check("{{ position | nosuchfilter }}").is_err());
        assert!(compile_check("<p>{{ position_text }}</p>").is_ok());
    }

    #[test]
    fn texts() {
        assert_eq!(position_text(Lang::Fr, Some(42)), "42");
        assert_eq!(position_text(Lang::Fr, Some(1234)), "environ 1\u{202f}300");
        assert_eq!(position_text(Lang::En, Some(1234)), "about 1,300");
        assert_eq!(
            eta_text(Lang::Fr, Some(std::time::Duration::from_secs(30))),
            "moins d'une minute"
        );
        assert_eq!(
            eta_text(Lang::En, Some(std::time::Duration::from_secs(4000))),
            "about 1 h 07"
        );
        assert_eq!(
            eta_text(Lang::Fr, Some(std::time::Duration::from_secs(61))),
            "2 min"
        );
        assert_eq!(
            eta_text(Lang::En, Some(std::time::Duration::from_secs(3540))),
            "59 min"
        );
        assert_eq!(clock_text(3_723_000), "01:02:03");
        assert_eq!(clock_text(86_399_999), "23:59:59");
        assert_eq!(clock_text(86_400_000 + 45_296_000), "12:34:56");
        assert_eq!(position_text(Lang::En, Some(1_234_567)), "about 1,234,600");
        assert_eq!(position_text(Lang::Fr, Some(99)), "99");
    }
}
