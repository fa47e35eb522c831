//! The queue page (HTML through a minijinja template, built in or supplied by ops) and
//! the JSON status the page and mobile apps poll.

use minijinja::Value;
use serde::Serialize;

use super::render::{Common, PageKind, Pages};
use super::Lang;

#[derive(Serialize)]
struct QueueContext<'a> {
    #[serde(flatten)]
    common: Common<'a>,
    t: Texts,
    position: Option<u64>,
    position_text: &'a str,
    eta_text: &'a str,
    updated_at: &'a str,
    poll_ms: u64,
    refresh_s: u64,
    status_url: &'a str,
    room: &'a str,
    paused: bool,
    opens_at: &'a str,
    phase: &'a str,
    draw: bool,
    sound: bool,
}

impl Pages {
    pub(crate) fn try_render_queue(
        &self,
        v: &QueueView,
        rid: Option<&str>,
    ) -> Result<String, String> {
        let ctx = QueueContext {
            common: self.common(PageKind::Queue, v.lang, rid),
            t: texts(v.lang, v.refresh_s),
            position: v.position,
            position_text: &v.position_text,
            eta_text: &v.eta_text,
            updated_at: &v.updated_at,
            poll_ms: v.poll_ms,
            refresh_s: v.refresh_s,
            status_url: &v.status_url,
            room: &v.room,
            paused: v.paused,
            opens_at: &v.opens_at,
            phase: v.phase,
            draw: v.draw,
            sound: v.sound,
        };
        self.render_value(PageKind::Queue, Value::from_serialize(&ctx))
    }

    /// The queue page's HTML.
    pub fn render_queue(&self, v: &QueueView, rid: Option<&str>) -> String {
        self.render_or_builtin(PageKind::Queue, |p| p.try_render_queue(v, rid))
    }

    pub(crate) fn try_render_not_open(
        &self,
        v: &NotOpenView,
        rid: Option<&str>,
    ) -> Result<String, String> {
        let t = match v.lang {
            Lang::Fr => NotOpenTexts {
                title: "Ce n'est pas encore ouvert",
                what: "Le site ouvre ses portes à une heure prévue, et il est encore trop tôt : personne n'a de place pour l'instant, vous n'avez rien perdu.",
                opens_label: "Ouverture :",
                next: if v.draw {
                    "Un peu avant l'ouverture, cette page vous inscrira dans la file. L'ordre de passage sera tiré au sort à l'ouverture : arriver en avance ne fait pas passer avant."
                } else {
                    "Un peu avant l'ouverture, cette page vous inscrira dans la file, dans l'ordre d'arrivée. Gardez-la ouverte : elle se recharge toute seule."
                },
                window: "Inscriptions dans la file à partir de",
            },
            Lang::En => NotOpenTexts {
                title: "It is not open yet",
                what: "The site opens at a set time and it is still too early: nobody has a place yet, so you have lost nothing.",
                opens_label: "Opens:",
                next: if v.draw {
                    "A little before the opening, this page will put you in the queue. The order will be drawn at random at the opening: coming early does not put you first."
                } else {
                    "A little before the opening, this page will put you in the queue, in order of arrival. Keep it open: it reloads by itself."
                },
                window: "Joining the queue starts",
            },
        };
        let ctx = NotOpenContext {
            common: self.common(PageKind::NotOpenYet, v.lang, rid),
            t,
            opens_at: &v.opens_at,
            window_at: &v.window_at,
            reload_in: v.reload_in,
            draw: v.draw,
        };
        self.render_value(PageKind::NotOpenYet, Value::from_serialize(&ctx))
    }

    /// The "not open yet" page's HTML.
    pub fn render_not_open(&self, v: &NotOpenView, rid: Option<&str>) -> String {
        self.render_or_builtin(PageKind::NotOpenYet, |p| p.try_render_not_open(v, rid))
    }
}

#[derive(Serialize)]
struct NotOpenTexts {
    title: &'static str,
    what: &'static str,
    opens_label: &'static str,
    next: &'static str,
    window: &'static str,
}

#[derive(Serialize)]
struct NotOpenContext<'a> {
    #[serde(flatten)]
    common: Common<'a>,
    t: NotOpenTexts,
    opens_at: &'a str,
    window_at: &'a str,
    reload_in: u64,
    draw: bool,
}

/// What the "not open yet" page shows (before a scheduled opening's pre-queue window).
#[derive(Debug, Clone)]
pub struct NotOpenView {
    pub lang: Lang,
    /// The opening, in words ("lundi 16 mars à 08:00").
    pub opens_at: String,
    /// When places start being handed out, in words.
    pub window_at: String,
    /// Seconds before the page reloads itself (until the window, capped).
    pub reload_in: u64,
    /// The order is drawn at the opening (`method: random`).
    pub draw: bool,
}

impl NotOpenView {
    pub(crate) fn sample() -> NotOpenView {
        NotOpenView {
            lang: Lang::Fr,
            opens_at: "lundi 16 mars à 08:00".into(),
            window_at: "lundi 16 mars à 07:30".into(),
            reload_in: 300,
            draw: true,
        }
    }
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
    /// `waiting`, or `prequeue` (before a scheduled opening, holding a place).
    pub phase: &'static str,
    /// The pre-queue's order is drawn at the opening (`method: random`).
    pub draw: bool,
    /// Play a short sound when the turn comes in a background tab (`turn_sound`).
    pub sound: bool,
}

impl QueueView {
    pub(crate) fn sample() -> QueueView {
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
            phase: "waiting",
            draw: false,
            sound: false,
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
    reload: &'static str,
    opens_label: &'static str,
    prequeue_draw: &'static str,
    prequeue_fifo: &'static str,
    after_draw: &'static str,
    turn_title: &'static str,
    why_title: &'static str,
    why_text: &'static str,
}

fn texts(lang: Lang, refresh_s: u64) -> Texts {
    match lang {
        Lang::Fr => Texts {
            title: "Vous êtes dans la file d'attente",
            intro: "Beaucoup d'élèves se connectent en ce moment. Les places sont données dans l'ordre et cette page se met à jour toute seule. Gardez cet onglet ouvert : ouvrir d'autres onglets ne fait pas avancer plus vite.",
            position_label: "Votre position",
            ahead_label: "personnes devant vous",
            wait_label: "Attente estimée",
            updated_label: "Mis à jour à",
            estimating: "estimation en cours…",
            noscript: format!("Cette page se recharge toute seule toutes les {refresh_s} secondes."),
            admitted: "C'est votre tour ! Chargement…",
            paused: "Les entrées sont en pause un moment. Vous gardez votre place.",
            lost: "Votre place a expiré, parce que la page est restée fermée trop longtemps. Rechargez la page pour en reprendre une.",
            reload: "Recharger la page",
            opens_label: "Ouverture :",
            prequeue_draw: "Vous êtes inscrit dans la file. L'ordre de passage sera tiré au sort à l'ouverture : tout le monde a la même chance, même en arrivant en avance.",
            prequeue_fifo: "Vous êtes inscrit dans la file. Les entrées commencent à l'ouverture, dans l'ordre d'arrivée.",
            after_draw: "tirée au sort à l'ouverture",
            turn_title: "C'est votre tour !",
            why_title: "Pourquoi cette attente ?",
            why_text: "Beaucoup d'élèves se connectent en même temps. Pour que le site reste rapide pour tout le monde, nous faisons entrer les personnes petit à petit, dans l'ordre. Ce n'est pas de votre faute.",
        },
        Lang::En => Texts {
            title: "You are in the queue",
            intro: "Many students are signing in right now. Places are given in order and this page updates by itself. Keep this tab open: opening more tabs does not make it faster.",
            position_label: "Your position",
            ahead_label: "people ahead of you",
            wait_label: "Estimated wait",
            updated_label: "Updated at",
            estimating: "estimating…",
            noscript: format!("This page reloads by itself every {refresh_s} seconds."),
            admitted: "It's your turn! Loading…",
            paused: "Admissions are paused for a moment. You keep your place.",
            lost: "Your place has expired because the page stayed closed too long. Reload the page to get a new one.",
            reload: "Reload the page",
            opens_label: "Opens:",
            prequeue_draw: "You are in the queue. The order will be drawn at random at the opening: everyone has the same chance, even those who came early.",
            prequeue_fifo: "You are in the queue. Admissions start at the opening, in order of arrival.",
            after_draw: "drawn at the opening",
            turn_title: "It's your turn!",
            why_title: "Why wait?",
            why_text: "Many students are signing in at the same time. To keep the site fast for everyone, we let people in a few at a time, in order. It is not your fault.",
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

/// "3 min", "1 h 10": a number of minutes as a range's end, with no-break spaces so a
/// narrow phone never breaks "1 h 10" over two lines.
fn minutes_text(m: u64) -> String {
    if m < 60 {
        let mut t = String::with_capacity(8);
        t.push_str(itoa::Buffer::new().format(m));
        t.push_str("\u{a0}min");
        t
    } else {
        format!("{}\u{a0}h\u{a0}{:02}", m / 60, m % 60)
    }
}

/// The wait as shown: one figure when the room is sure enough ([`eta_text`] of the
/// estimate), otherwise a range whose ends hold the measured bounds (the low end
/// rounded down, the high end up): "entre 3 et 5 min", "between 45 min and 1 h 10",
/// "moins de 3 min" when the low end is under a minute.
pub fn wait_text(lang: Lang, wait: Option<crate::policy::estimate::Wait>) -> String {
    let Some(w) = wait else {
        return String::new();
    };
    if !w.is_range() {
        return eta_text(lang, Some(w.estimate));
    }
    let lo = w.low.as_secs() / 60;
    let hi = w.high.as_secs_f64().ceil() as u64;
    let hi = hi.div_ceil(60);
    if hi <= 1 || lo >= hi {
        return eta_text(lang, Some(w.estimate));
    }
    if lo == 0 {
        return match lang {
            Lang::Fr => format!("moins de {}", minutes_text(hi)),
            Lang::En => format!("less than {}", minutes_text(hi)),
        };
    }
    // The unit once when both ends are in minutes: "entre 3 et 5 min".
    let low = if hi < 60 {
        itoa::Buffer::new().format(lo).to_string()
    } else {
        minutes_text(lo)
    };
    match lang {
        Lang::Fr => format!("entre {low} et {}", minutes_text(hi)),
        Lang::En => format!("between {low} and {}", minutes_text(hi)),
    }
}

/// The JSON status of a ticket.
#[derive(Debug, Serialize)]
pub struct Status<'a> {
    pub room: &'a str,
    /// `waiting`, `admitted` or `lost`.
    pub state: &'static str,
    pub position: Option<u64>,
    pub position_text: String,
    /// The single best estimate of the wait (seconds).
    pub eta_seconds: Option<u64>,
    /// The range the wait should fall in (seconds, rounded outwards); both equal to
    /// `eta_seconds` when the room is sure enough to show one figure.
    pub eta_low_seconds: Option<u64>,
    pub eta_high_seconds: Option<u64>,
    /// The wait as the page shows it: one figure or a range ("entre 3 et 5 min").
    pub eta_text: String,
    /// RFC 3339 with the offset of `pages.time_zone`.
    pub updated_at: String,
    /// Local time, `15:27:19`.
    pub updated_at_text: String,
    pub poll_after_ms: u64,
    /// The room's pace follows the origin (`new_users_per_minute: auto`): the estimate
    /// follows it too, and may move. Absent for a fixed room.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pace_adaptive: bool,
    pub paused: bool,
    /// The scheduled opening, RFC 3339 with its offset, while it is ahead.
    pub opens_at: Option<String>,
    /// The same in words ("lundi 16 mars à 08:00").
    pub opens_at_text: Option<String>,
    /// The id of the request this answers (`X-Request-Id`).
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_template_renders_and_escapes() {
        let pages = Pages::for_room(&Pages::builtin(), None, Some("<b>ENT</b>")).expect("pages");
        let mut v = QueueView::sample();
        v.room = "\"><script>alert(1)</script>".into();
        let html = pages.try_render_queue(&v, None).expect("render");
        assert!(html.contains("lang=\"fr\""));
        assert!(html.contains("aria-live"));
        assert!(html.contains("http-equiv=\"refresh\""));
        assert!(!html.contains("<script>alert(1)"), "escaped");
        assert!(!html.contains("<b>ENT</b>"), "escaped");
        v.lang = Lang::En;
        v.position = None;
        let html = pages.try_render_queue(&v, None).expect("render en");
        assert!(html.contains("lang=\"en\""));
    }

    #[test]
    fn prequeue_and_not_open_pages() {
        let pages = Pages::builtin();
        let mut v = QueueView::sample();
        v.phase = "prequeue";
        v.draw = true;
        v.position = None;
        v.position_text.clear();
        let html = pages.try_render_queue(&v, None).expect("render");
        assert!(html.contains("tiré au sort à l&#x27;ouverture"), "{html}");
        let n = NotOpenView::sample();
        let html = pages
            .try_render_not_open(&n, Some("rid-1"))
            .expect("render");
        assert!(html.contains("Ce n&#x27;est pas encore ouvert"));
        assert!(html.contains("lundi 16 mars à 08:00"));
        assert!(
            !html.contains("Votre position"),
            "no position before the window"
        );
        assert!(html.contains("rid-1"));
    }

    #[test]
    fn the_request_id_is_printed_once() {
        // The layout's footer prints it; the queue page printed it a second time.
        let html = Pages::builtin()
            .try_render_queue(&QueueView::sample(), Some("rid-42"))
            .expect("render");
        assert_eq!(html.matches("rid-42").count(), 1, "{html}");
    }

    #[test]
    fn broken_templates_are_refused() {
        let p = Pages::builtin();
        assert!(p.for_room(Some("{% if %}"), None).is_err());
        assert!(p
            .for_room(Some("{{ position | nosuchfilter }}"), None)
            .is_err());
        assert!(p.for_room(Some("<p>{{ position_text }}</p>"), None).is_ok());
    }

    fn range(est: u64, low: u64, high: u64) -> Option<crate::policy::estimate::Wait> {
        Some(crate::policy::estimate::Wait {
            estimate: std::time::Duration::from_secs(est),
            low: std::time::Duration::from_secs(low),
            high: std::time::Duration::from_secs(high),
        })
    }

    #[test]
    fn waits_as_one_figure_or_a_range() {
        assert_eq!(
            wait_text(Lang::Fr, range(240, 200, 290)),
            "entre 3 et 5\u{a0}min"
        );
        assert_eq!(
            wait_text(Lang::En, range(240, 200, 290)),
            "between 3 and 5\u{a0}min"
        );
        assert_eq!(wait_text(Lang::Fr, range(240, 240, 240)), "4 min");
        assert_eq!(wait_text(Lang::En, range(240, 240, 240)), "4 min");
        assert_eq!(
            wait_text(Lang::Fr, range(3000, 2700, 4200)),
            "entre 45\u{a0}min et 1\u{a0}h\u{a0}10"
        );
        assert_eq!(
            wait_text(Lang::En, range(4500, 4200, 6000)),
            "between 1\u{a0}h\u{a0}10 and 1\u{a0}h\u{a0}40"
        );
        assert_eq!(
            wait_text(Lang::Fr, range(60, 30, 150)),
            "moins de 3\u{a0}min"
        );
        assert_eq!(
            wait_text(Lang::En, range(60, 30, 150)),
            "less than 3\u{a0}min"
        );
        // A range inside one minute says what one figure says.
        assert_eq!(wait_text(Lang::Fr, range(20, 10, 40)), "moins d'une minute");
        assert_eq!(wait_text(Lang::Fr, None), "");
    }

    #[test]
    fn the_queue_page_shows_the_range_in_both_languages() {
        let pages = Pages::builtin();
        for (lang, want) in [
            (Lang::Fr, "entre 3 et 5\u{a0}min"),
            (Lang::En, "between 3 and 5\u{a0}min"),
        ] {
            let mut v = QueueView::sample();
            v.lang = lang;
            v.eta_text = wait_text(lang, range(240, 200, 290));
            let html = pages.try_render_queue(&v, None).expect("render");
            assert!(
                html.contains(&format!(">{want}</dd>")),
                "{lang:?}: the wait as a range:\n{html}"
            );
        }
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
        assert_eq!(position_text(Lang::En, Some(1_234_567)), "about 1,234,600");
        assert_eq!(position_text(Lang::Fr, Some(99)), "99");
    }
}
