//! The Monday-morning scenario: open-loop arrivals of students on a ramp, teachers who
//! upload exam papers early on, and what each of them sees, recorded per person.
//!
//! A student: opens the ENT (`GET /`); when a waiting room answers with its queue page,
//! polls the page's status URL like the page's script does (first poll after the page's
//! `data-poll` ±20%, then after each answer's `poll_after_ms`, cookies kept, 800 ms of
//! "c'est votre tour" then a reload of the page asked for); logs in (`GET` then `POST
//! /login`, follows the 303); downloads the day's assignment file and their class's exam
//! paper (checked byte for byte by SHA-256); opens a few pages; some join the visio; logs
//! out. Between clicks, a think time. An error (a status the ENT would not normally send,
//! a refused connection, no answer within the browser's timeout) is counted where it is
//! seen, and the student reloads the same step after a few seconds, until their patience
//! runs out.
//!
//! A teacher: opens the ENT, logs in, uploads the class's exam paper (`POST
//! /files/upload?assignment=ID`) and checks the checksum the ENT answers. On an error or
//! time-out the teacher clicks "send" again (up to 5 times): if the first copy did arrive,
//! the ENT now has it twice.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::client::{Browser, Fail, Resp};

const HTML: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const JSON: &str = "application/json";
const PAGES: [&str; 6] = [
    "/pages/cahier-de-textes",
    "/pages/messagerie",
    "/pages/vie-scolaire",
    "/pages/notes",
    "/pages/emploi-du-temps",
    "/pages/ressources",
];

/// What the scenario needs to know.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where students and teachers connect (the origin, nginx or ecluse).
    pub target: SocketAddr,
    pub students: usize,
    /// Arrivals spread over this, at a rate growing linearly from zero (08:00 sharpens).
    pub ramp: Duration,
    pub teachers: usize,
    pub think: (Duration, Duration),
    pub pages: usize,
    pub visio_share: f64,
    pub patience: Duration,
    pub timeout: Duration,
    /// The day's assignment file (never changes during the run) and its SHA-256.
    pub day_file: usize,
    pub day_sha: String,
    /// First exam slot id; teacher `j` publishes into `exam_first + j`.
    pub exam_first: usize,
    pub paper_len: usize,
    pub seed: u64,
}

/// A teacher's exam paper: deterministic bytes unique to the run and the class.
pub fn paper(seed: u64, class: usize, len: usize) -> Bytes {
    let mut out = format!(
        "%PDF-1.4\n1 0 obj << /Title (Examen blanc, classe {class}, run {seed:x}) >> endobj\n"
    )
    .into_bytes();
    let mut x = seed ^ (class as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    while out.len() + 7 < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len.saturating_sub(7));
    out.extend_from_slice(b"\n%%EOF\n");
    Bytes::from(out)
}

pub fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Source address of student `i` (127.16.0.0 and up; never .0 or .255).
pub fn student_ip(i: usize) -> IpAddr {
    let a = 16 + (i / 62_500) as u8;
    let b = ((i / 250) % 250) as u8 + 1;
    let c = (i % 250) as u8 + 1;
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// Source address of teacher `j`: 127.2.0.0/16, the "staff network" of the bench.
pub fn teacher_ip(j: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 2, (j / 250) as u8, (j % 250) as u8 + 1))
}

/// Live counts, read by the sampler.
#[derive(Debug)]
pub struct Live {
    pub t0: Instant,
    /// End of the run (seconds since `t0`): whoever is not served by then gives up.
    pub stop_at: f64,
    pub arrived: AtomicU64,
    /// Students kept out: on a queue page, or refused at least once on their way in,
    /// and not in yet.
    pub held: AtomicI64,
    /// Students inside the ENT (admitted, not logged out yet).
    pub active: AtomicI64,
    /// Students fully served (everything but the optional visio and logout).
    pub served: AtomicU64,
    /// Per second of the run: students served, errors, visio refused as switched off,
    /// queue pages and polls answered.
    pub served_at: Vec<AtomicU64>,
    pub errors_at: Vec<AtomicU64>,
    pub feature_off_at: Vec<AtomicU64>,
    pub queue_at: Vec<AtomicU64>,
}

impl Live {
    pub fn new(t0: Instant, seconds: usize, stop_at: Duration) -> Live {
        let v = || (0..seconds).map(|_| AtomicU64::new(0)).collect();
        Live {
            t0,
            stop_at: stop_at.as_secs_f64(),
            arrived: AtomicU64::new(0),
            held: AtomicI64::new(0),
            active: AtomicI64::new(0),
            served: AtomicU64::new(0),
            served_at: v(),
            errors_at: v(),
            feature_off_at: v(),
            queue_at: v(),
        }
    }

    pub fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn bump(&self, v: &[AtomicU64]) {
        let s = self.t0.elapsed().as_secs() as usize;
        if let Some(c) = v.get(s.min(v.len().saturating_sub(1))) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What happened to one student.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StudentRec {
    pub id: usize,
    /// Seconds since the start of the run.
    pub arrival: f64,
    /// When the first real ENT page arrived.
    pub admitted: Option<f64>,
    /// Sent time of the last queue page or "waiting" status: the waiting room had not
    /// let them in at that moment.
    pub last_waiting: Option<f64>,
    /// Sent time of the last error on the way in (before the first real page).
    pub last_refused: Option<f64>,
    /// The waiting-room ticket number, when a waiting room gave one.
    pub ticket: Option<u64>,
    /// The first estimate of the wait the queue told this student: (sent time, seconds
    /// predicted), to compare with the wait they had.
    pub first_eta: Option<(f64, f64)>,
    /// The range told with it (`eta_low_seconds`, `eta_high_seconds`; equal ends: one
    /// figure was shown).
    pub first_range: Option<(f64, f64)>,
    pub queued: bool,
    pub served: Option<f64>,
    pub errors: u32,
    /// Error kinds seen, for the report (`503`, `timeout`, `wrong_paper`…).
    pub error_kinds: Vec<String>,
    pub wrong_file: u32,
    pub paper_not_yet: u32,
    pub visio: Option<&'static str>,
    pub gave_up: bool,
}

/// What happened to one teacher's upload.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TeacherRec {
    pub class: usize,
    pub assignment: usize,
    pub sha256: String,
    pub attempts: u32,
    /// The ENT answered 201 with this paper's checksum.
    pub accepted: bool,
    pub errors: u32,
    pub done_at: Option<f64>,
}

/// Reads a waiting-room ticket number from an ecluse cookie value
/// (`base64url(v1|kid|room|class|state|ticket|…).mac`); the payload is signed, not
/// secret, so a client may read its own number.
pub fn ticket_number(cookie: &str) -> Option<u64> {
    use base64::Engine;
    let payload = cookie.split('.').next()?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.split('|').nth(5)?.parse().ok()
}

/// Unescapes what minijinja's HTML escaping produces in an attribute.
fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#x3d;", "=")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A queue page: the element `id="q"` of ecluse's page, carrying `data-url="STATUS"` and
/// `data-poll="MS"` (attributes in any order: templates are ops' to change).
fn queue_page(r: &Resp) -> Option<(String, u64)> {
    if r.status != 200 {
        return None;
    }
    let body = std::str::from_utf8(&r.body).ok()?;
    let i = body.find(" id=\"q\"")?;
    let start = body[..i].rfind('<')?;
    let tag = &body[start..i + body[i..].find('>')?];
    let attr = |name: &str| -> Option<&str> {
        let key = format!(" {name}=\"");
        let j = tag.find(&key)? + key.len();
        Some(&tag[j..j + tag[j..].find('"')?])
    };
    let url = unescape(attr("data-url")?);
    let poll = attr("data-poll")
        .and_then(|p| p.parse().ok())
        .unwrap_or(10_000);
    Some((url, poll))
}

/// What a step's answer means for the person.
enum Verdict {
    Good,
    /// Not an error, try again after this (the exam paper is not published yet).
    Later(Duration),
    /// An error the person sees.
    Error(String),
}

struct Person<'a> {
    live: &'a Live,
    plan: &'a Plan,
    b: Browser,
    rng: rand::rngs::StdRng,
    rec: StudentRec,
    /// True until the first real page: refusals then count as "held".
    outside: bool,
    held: bool,
}

impl Person<'_> {
    async fn think(&mut self) {
        let (lo, hi) = self.plan.think;
        let d = if hi > lo {
            self.rng.random_range(lo..hi)
        } else {
            lo
        };
        tokio::time::sleep(d).await;
    }

    /// Sleep before a retry or a poll; a long wait closes the idle connection as a
    /// browser (or the server) would.
    async fn pause(&mut self, d: Duration) {
        if d > Duration::from_secs(2) {
            self.b.close();
        }
        tokio::time::sleep(d).await;
    }

    fn set_held(&mut self, on: bool) {
        if on != self.held {
            self.held = on;
            self.live
                .held
                .fetch_add(if on { 1 } else { -1 }, Ordering::Relaxed);
        }
    }

    fn impatient(&self) -> bool {
        let now = self.live.now();
        now >= self.live.stop_at || now - self.rec.arrival > self.plan.patience.as_secs_f64()
    }

    fn error(&mut self, kind: String, sent: f64) {
        self.rec.errors += 1;
        if self.rec.error_kinds.len() < 8 && !self.rec.error_kinds.contains(&kind) {
            self.rec.error_kinds.push(kind);
        }
        self.live.bump(&self.live.errors_at);
        if self.outside {
            self.rec.last_refused = Some(sent);
            self.set_held(true);
        }
    }

    fn note_ticket(&mut self) {
        let t = self
            .b
            .cookies()
            .find(|(n, _)| n.starts_with("ecluse_"))
            .and_then(|(_, v)| ticket_number(v));
        if t.is_some() {
            self.rec.ticket = t;
        }
    }

    /// Waits in the queue from its page until admitted (true) or out of patience.
    async fn queue(&mut self, status_url: String, poll_ms: u64, sent: f64) -> bool {
        self.rec.queued = true;
        self.live.bump(&self.live.queue_at);
        if self.outside {
            self.rec.last_waiting = Some(sent);
            self.set_held(true);
        }
        self.note_ticket();
        let jitter = |rng: &mut rand::rngs::StdRng, ms: u64| {
            Duration::from_millis((ms as f64 * rng.random_range(0.8..1.2)) as u64)
        };
        let mut wait = jitter(&mut self.rng, poll_ms);
        let mut fails = 0u32;
        loop {
            self.pause(wait).await;
            if self.impatient() {
                return false;
            }
            let sent = self.live.now();
            match self
                .b
                .send(Method::GET, &status_url, JSON, None, Bytes::new())
                .await
            {
                Ok(r) if r.status == 200 => {
                    self.live.bump(&self.live.queue_at);
                    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    fails = 0;
                    match v["state"].as_str() {
                        Some("admitted") => {
                            self.note_ticket();
                            // The page shows "c'est votre tour" and reloads 800 ms later.
                            tokio::time::sleep(Duration::from_millis(800)).await;
                            return true;
                        }
                        Some("waiting") => {
                            if self.outside {
                                self.rec.last_waiting = Some(sent);
                            }
                            if self.rec.first_eta.is_none() {
                                if let Some(eta) = v["eta_seconds"].as_f64() {
                                    self.rec.first_eta = Some((sent, eta));
                                    self.rec.first_range = v["eta_low_seconds"]
                                        .as_f64()
                                        .zip(v["eta_high_seconds"].as_f64());
                                }
                            }
                            let a = v["poll_after_ms"].as_u64().unwrap_or(0);
                            wait = if a > 0 {
                                Duration::from_millis(a)
                            } else {
                                jitter(&mut self.rng, poll_ms)
                            };
                        }
                        // Lost the place (or never had one): the page reloads.
                        _ => return true,
                    }
                }
                other => {
                    let kind = match other {
                        Ok(r) => format!("poll {}", r.status),
                        Err(e) => fail_kind(&e),
                    };
                    self.error(kind, sent);
                    fails += 1;
                    let ms = (poll_ms as f64 * 2f64.powi(fails as i32 - 1)).min(60_000.0) as u64;
                    wait = jitter(&mut self.rng, ms);
                }
            }
        }
    }

    /// One click: sends until `judge` is happy, going through the queue when a waiting
    /// room answers, reloading after errors. None when patience ran out.
    async fn step(
        &mut self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<(&str, Bytes)>,
        tries: Option<u32>,
        judge: impl Fn(&Resp) -> Verdict,
    ) -> Option<Resp> {
        let mut attempts = 0u32;
        loop {
            if self.impatient() {
                self.rec.gave_up = true;
                return None;
            }
            if tries.is_some_and(|t| attempts >= t) {
                return None;
            }
            attempts += 1;
            let sent = self.live.now();
            let (ct, bytes) = match &body {
                Some((ct, b)) => (Some(*ct), b.clone()),
                None => (None, Bytes::new()),
            };
            let r = self.b.send(method.clone(), path, accept, ct, bytes).await;
            match r {
                Ok(r) => {
                    if let Some((url, poll)) = queue_page(&r) {
                        if self.queue(url, poll, sent).await {
                            // Reload the page asked for (not a new attempt).
                            attempts = attempts.saturating_sub(1);
                            continue;
                        }
                        self.rec.gave_up = true;
                        return None;
                    }
                    match judge(&r) {
                        Verdict::Good => return Some(r),
                        Verdict::Later(d) => {
                            self.rec.paper_not_yet += 1;
                            self.pause(d).await;
                        }
                        Verdict::Error(kind) => {
                            if kind == "wrong_file" {
                                self.rec.wrong_file += 1;
                            }
                            self.error(kind, sent);
                            let d = self.rng.random_range(2.0..5.0);
                            self.pause(Duration::from_secs_f64(d)).await;
                        }
                    }
                }
                Err(e) => {
                    self.error(fail_kind(&e), sent);
                    let d = self.rng.random_range(2.0..5.0);
                    self.pause(Duration::from_secs_f64(d)).await;
                }
            }
        }
    }
}

fn fail_kind(e: &Fail) -> String {
    match e {
        Fail::Timeout(_) => "timeout".into(),
        Fail::Connect(_) => "connect".into(),
        Fail::Http(_) => "connection".into(),
        Fail::Build(_) => "client".into(),
    }
}

fn status_is(want: u16) -> impl Fn(&Resp) -> Verdict {
    move |r: &Resp| {
        if r.status == want {
            Verdict::Good
        } else {
            Verdict::Error(r.status.to_string())
        }
    }
}

fn body_is(sha: String, not_yet: bool) -> impl Fn(&Resp) -> Verdict {
    move |r: &Resp| match r.status {
        200 if sha_hex(&r.body) == sha => Verdict::Good,
        200 => Verdict::Error("wrong_file".into()),
        404 if not_yet => Verdict::Later(Duration::from_secs(3)),
        s => Verdict::Error(s.to_string()),
    }
}

/// Students of a class download its exam paper: (assignment id, SHA-256), shared.
pub type Papers = Arc<Vec<(usize, String)>>;

/// One student's whole morning.
pub async fn student(
    id: usize,
    at: Duration,
    live: Arc<Live>,
    plan: Arc<Plan>,
    papers: Papers,
) -> StudentRec {
    tokio::time::sleep_until(tokio::time::Instant::from_std(live.t0 + at)).await;
    live.arrived.fetch_add(1, Ordering::Relaxed);
    let mut p = Person {
        live: &live,
        plan: &plan,
        b: Browser::new(plan.target, student_ip(id), plan.timeout),
        rng: rand::rngs::StdRng::seed_from_u64(plan.seed ^ (id as u64).wrapping_mul(0x2545_F491)),
        rec: StudentRec {
            id,
            arrival: live.now(),
            ..StudentRec::default()
        },
        outside: true,
        held: false,
    };
    journey(&mut p, &papers).await;
    p.set_held(false);
    if p.rec.admitted.is_some() {
        live.active.fetch_sub(1, Ordering::Relaxed);
    }
    p.rec
}

async fn journey(p: &mut Person<'_>, papers: &Papers) {
    // Open the ENT.
    if p.step(Method::GET, "/", HTML, None, None, status_is(200))
        .await
        .is_none()
    {
        return;
    }
    p.rec.admitted = Some(p.live.now());
    p.outside = false;
    p.set_held(false);
    p.live.active.fetch_add(1, Ordering::Relaxed);
    p.note_ticket();

    // Log in.
    p.think().await;
    if p.step(Method::GET, "/login", HTML, None, None, status_is(200))
        .await
        .is_none()
    {
        return;
    }
    p.think().await;
    let form = Bytes::from(format!("user=eleve{}&password=secret", p.rec.id));
    let body = Some(("application/x-www-form-urlencoded", form));
    if p.step(Method::POST, "/login", HTML, body, None, status_is(303))
        .await
        .is_none()
    {
        return;
    }
    if p.step(Method::GET, "/", HTML, None, None, status_is(200))
        .await
        .is_none()
    {
        return;
    }

    // The day's assignment, then the class's exam paper.
    p.think().await;
    let day = format!("/files/assignments/{}.pdf", p.plan.day_file);
    let sha = p.plan.day_sha.clone();
    if p.step(
        Method::GET,
        &day,
        "application/pdf,*/*",
        None,
        None,
        body_is(sha, false),
    )
    .await
    .is_none()
    {
        return;
    }
    if !papers.is_empty() {
        p.think().await;
        let (exam, sha) = papers[p.rec.id % papers.len()].clone();
        let path = format!("/files/assignments/{exam}.pdf");
        if p.step(
            Method::GET,
            &path,
            "application/pdf,*/*",
            None,
            None,
            body_is(sha, true),
        )
        .await
        .is_none()
        {
            return;
        }
    }

    // A few pages.
    for k in 0..p.plan.pages {
        p.think().await;
        let page = PAGES[(p.rec.id + k) % PAGES.len()];
        if p.step(Method::GET, page, HTML, None, None, status_is(200))
            .await
            .is_none()
        {
            return;
        }
    }
    p.rec.served = Some(p.live.now());
    p.live.served.fetch_add(1, Ordering::Relaxed);
    p.live.bump(&p.live.served_at);

    // Some try the visio (the class app asks for JSON): once, whatever happens.
    if p.rng.random_bool(p.plan.visio_share.clamp(0.0, 1.0)) {
        p.think().await;
        let r = p
            .step(Method::GET, "/visio", JSON, None, Some(1), |r: &Resp| {
                let off = r.status == 503
                    && std::str::from_utf8(&r.body).is_ok_and(|b| b.contains("\"feature_off\""));
                if r.status == 200 || off {
                    Verdict::Good
                } else {
                    Verdict::Error(format!("visio {}", r.status))
                }
            })
            .await;
        p.rec.visio = Some(match r {
            Some(r) if r.status == 200 => "joined",
            Some(_) => {
                p.live.bump(&p.live.feature_off_at);
                "feature_off"
            }
            None => "error",
        });
    }

    // Log out (frees the place in a waiting room at once).
    p.think().await;
    let _ = p
        .step(Method::GET, "/logout", HTML, None, Some(1), status_is(303))
        .await;
}

/// One teacher: in, logged in, exam paper uploaded (clicking "send" again after an
/// error, 5 times at most).
pub async fn teacher(
    class: usize,
    at: Duration,
    live: Arc<Live>,
    plan: Arc<Plan>,
    paper: Bytes,
) -> TeacherRec {
    tokio::time::sleep_until(tokio::time::Instant::from_std(live.t0 + at)).await;
    let mut rec = TeacherRec {
        class,
        assignment: plan.exam_first + class,
        sha256: sha_hex(&paper),
        ..TeacherRec::default()
    };
    let mut p = Person {
        live: &live,
        plan: &plan,
        b: Browser::new(plan.target, teacher_ip(class), plan.timeout),
        rng: rand::rngs::StdRng::seed_from_u64(plan.seed ^ 0x7EAC ^ class as u64),
        rec: StudentRec::default(),
        outside: false,
        held: false,
    };
    p.rec.arrival = live.now();
    let ok = p
        .step(Method::GET, "/", HTML, None, None, status_is(200))
        .await
        .is_some()
        && p.step(Method::GET, "/login", HTML, None, None, status_is(200))
            .await
            .is_some()
        && p.step(
            Method::POST,
            "/login",
            HTML,
            Some((
                "application/x-www-form-urlencoded",
                Bytes::from(format!("user=prof{class}&password=secret")),
            )),
            None,
            status_is(303),
        )
        .await
        .is_some();
    if ok {
        let path = format!("/files/upload?assignment={}", rec.assignment);
        let sha = rec.sha256.clone();
        let before = p.rec.errors;
        let r = p
            .step(
                Method::POST,
                &path,
                JSON,
                Some(("application/pdf", paper)),
                Some(5),
                move |r: &Resp| {
                    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    if r.status == 201 && v["sha256"].as_str() == Some(sha.as_str()) {
                        Verdict::Good
                    } else {
                        Verdict::Error(format!("upload {}", r.status))
                    }
                },
            )
            .await;
        rec.attempts = p.rec.errors - before + u32::from(r.is_some());
        rec.accepted = r.is_some();
    }
    rec.errors = p.rec.errors;
    rec.done_at = Some(live.now());
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ticket_number_from_an_ecluse_cookie() {
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode("v1|k1|ent|0|w|1234|1700000000|1700000005|0");
        assert_eq!(
            ticket_number(&format!("{payload}.c2lnbmF0dXJl")),
            Some(1234)
        );
        assert_eq!(ticket_number("garbage"), None);
    }

    #[test]
    fn finds_the_queue_page_and_its_status_url() {
        let body = r#"<main id="q" data-url="&#x2f;.ecluse&#x2f;queue&#x2f;status?room&#x3d;ent" data-poll="2000" data-refresh="5">"#;
        let r = Resp {
            status: 200,
            body: Bytes::from(body),
        };
        assert_eq!(
            queue_page(&r),
            Some(("/.ecluse/queue/status?room=ent".to_string(), 2000))
        );
        let page = Resp {
            status: 200,
            body: Bytes::from_static(b"<h2>Cahier de textes</h2>"),
        };
        assert_eq!(queue_page(&page), None);
        // The attributes in another order, as the built-in template writes them.
        let r = Resp {
            status: 200,
            body: Bytes::from_static(
                br#"<div id="q" class="card" data-url="/.ecluse/queue/status?room=ent" data-poll="3000">"#,
            ),
        };
        assert_eq!(
            queue_page(&r),
            Some(("/.ecluse/queue/status?room=ent".to_string(), 3000))
        );
    }

    #[test]
    fn papers_have_the_asked_length_and_differ_by_class() {
        let a = paper(7, 0, 150_000);
        assert_eq!(a.len(), 150_000);
        assert!(a.starts_with(b"%PDF-1.4") && a.ends_with(b"%%EOF\n"));
        assert_ne!(sha_hex(&a), sha_hex(&paper(7, 1, 150_000)));
        assert_eq!(a, paper(7, 0, 150_000));
    }

    #[test]
    fn every_student_has_a_distinct_loopback_address() {
        let ips: std::collections::HashSet<IpAddr> = (0..200_000).map(student_ip).collect();
        assert_eq!(ips.len(), 200_000);
        assert!(ips.iter().all(|ip| ip.is_loopback()));
        assert!(teacher_ip(3).is_loopback());
    }
}
