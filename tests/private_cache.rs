//! A pupil's private file stays theirs through any outage (issue #17, classes 1 and 4):
//! the real ecluse binary in front of `LenientEnt`, an origin that answers each pupil
//! their own body at one URL, a 200 login page to anonymous visitors, and reads cookies
//! leniently.

mod common;

use common::lenient_ent::{LenientEnt, Validators};
use common::*;

const KEY: &str = "k1:0123456789abcdef0123456789abcdef0123\n";

/// One `revalidate` route on `/private/` and `/class/`, a `public` one on `/pub/`, and a
/// waiting room (unused by the routes: its cookie `ecluse_ent` is ecluse's own).
fn yaml(origin: std::net::SocketAddr) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 2, grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
waiting_rooms:
  ent: {{ active_users: 1000, new_users_per_minute: 60000, secret_file: keys }}
origins:
  ent: {{ servers: ["{origin}"], max_inflight: 100, health_check: {{ disabled: true }} }}
routes:
  - name: private
    match: {{ path_prefix: /private/ }}
    origin: ent
    cache: {{ mode: revalidate, stale_if_error: 1h }}
  - name: class
    match: {{ path_prefix: /class/ }}
    origin: ent
    cache: {{ mode: revalidate, stale_if_error: 1h }}
  - name: public
    match: {{ path_prefix: /pub/ }}
    origin: ent
    cache: {{ mode: public, ttl: 10m }}
  - name: ent
    match: {{ path_prefix: / }}
    origin: ent
"#
    )
}

fn start(ent: &LenientEnt) -> Ecluse {
    Ecluse::start_with(&yaml(ent.addr), &[("keys", KEY.as_bytes())], |_| {})
}

/// The same routes, with `trust_strong_etags: true` on the `revalidate` ones (an ENT ops
/// know to check credentials on conditional requests).
fn start_trusting(ent: &LenientEnt) -> Ecluse {
    let y = yaml(ent.addr).replace(
        "cache: { mode: revalidate, stale_if_error: 1h }",
        "cache: { mode: revalidate, stale_if_error: 1h, trust_strong_etags: true }",
    );
    Ecluse::start_with(&y, &[("keys", KEY.as_bytes())], |_| {})
}

struct Answer {
    status: u16,
    cache_status: String,
    body: String,
    etag: Option<String>,
}

async fn get(e: &Ecluse, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(e, reqwest::Method::GET, path, headers).await
}

async fn send(e: &Ecluse, method: reqwest::Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut rb = client().request(method, e.url(path));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let cache_status = r
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let etag = r
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert!(
        r.headers().get("x-ecluse-version").is_none(),
        "ecluse's bookkeeping reached a client"
    );
    let body = r.text().await.expect("body");
    Answer {
        status,
        cache_status,
        body,
        etag,
    }
}

const ALICE: &[(&str, &str)] = &[("cookie", "session=alice")];
const BOB: &[(&str, &str)] = &[("cookie", "session=bob")];
const CAROL: &[(&str, &str)] = &[("cookie", "session=carol")];
const ANON: &[(&str, &str)] = &[];

/// What nobody but `who` may ever see.
fn assert_not_theirs(a: &Answer, others: &[&str], ctx: &str) {
    for o in others {
        assert!(
            !a.body.contains(&format!("for {o}")),
            "{ctx}: got {o}'s body: {} {:?} {}",
            a.status,
            a.body,
            a.cache_status
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_pupils_body_never_reaches_an_earlier_pupil_during_an_outage() {
    // With each validator habit an ENT may have: the version is the ETag's bytes or,
    // without one, the body's.
    for validators in [
        Validators::StrongEtag,
        Validators::WeakEtag,
        Validators::None,
        Validators::TemplateDate,
    ] {
        let ent = LenientEnt::start().await;
        ent.set_validators(validators);
        let e = start(&ent);
        let url = "/private/bulletin";
        let a = get(&e, url, ALICE).await;
        assert_eq!(a.body, "/private/bulletin for alice", "{validators:?}");
        // Bob's answer replaces the stored copy (a revalidation 200 with a new ETag, or a
        // full answer when ecluse sends no validators for him).
        let b = get(&e, url, BOB).await;
        assert_eq!(b.body, "/private/bulletin for bob", "{validators:?}");
        ent.set_failing(true);
        // Alice was authorized for her version, not for bob's: the error, never his file.
        let a = get(&e, url, ALICE).await;
        assert_eq!(a.status, 503, "{validators:?}: {}", a.cache_status);
        assert_not_theirs(&a, &["bob"], &format!("{validators:?} alice"));
        for who in [CAROL, ANON] {
            let r = get(&e, url, who).await;
            assert_eq!(r.status, 503, "{validators:?} {who:?}");
            assert_not_theirs(&r, &["bob", "alice"], &format!("{validators:?} {who:?}"));
        }
        // Bob's own version is still his to have in the outage.
        let b = get(&e, url, BOB).await;
        assert_eq!(b.status, 200, "{validators:?}: {}", b.cache_status);
        assert_eq!(b.body, "/private/bulletin for bob");
        assert!(
            b.cache_status.contains("stale-if-error"),
            "{}",
            b.cache_status
        );
        if validators == Validators::TemplateDate {
            // A date that never moves cannot announce a re-upload (to browsers either).
            continue;
        }
        // A re-upload: bob's new edition is what he may have stale, not the old one.
        ent.set_failing(false);
        ent.set_edition(" (v2)");
        let b = get(&e, url, BOB).await;
        assert_eq!(b.body, "/private/bulletin for bob (v2)");
        ent.set_failing(true);
        let b = get(&e, url, BOB).await;
        assert_eq!(
            (b.status, b.body.as_str()),
            (200, "/private/bulletin for bob (v2)")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_get_a_stale_copy_only_of_the_version_they_were_given() {
    let ent = LenientEnt::start().await;
    let e = start(&ent);
    let url = "/private/marks";
    // The login page is the first thing stored.
    let anon = get(&e, url, ANON).await;
    assert!(anon.body.contains("login page"));
    ent.set_failing(true);
    // Anonymous visitors were given the login page: that much they may have.
    let anon = get(&e, url, ANON).await;
    assert_eq!(anon.status, 200);
    assert!(anon.body.contains("login page"), "{}", anon.body);
    ent.set_failing(false);
    let a = get(&e, url, ALICE).await;
    assert_eq!(a.body, "/private/marks for alice");
    ent.set_failing(true);
    // Alice's marks replaced the login page: anonymous visitors were never given them.
    let anon = get(&e, url, ANON).await;
    assert_eq!(anon.status, 503, "{}", anon.cache_status);
    assert_not_theirs(&anon, &["alice"], "anonymous");
    // HEAD and ranges meet the same rule.
    let head = send(&e, reqwest::Method::HEAD, url, ANON).await;
    assert_eq!(head.status, 503);
    let range = get(&e, url, &[("range", "bytes=0-7")]).await;
    assert_eq!(range.status, 503);
    assert_not_theirs(&range, &["alice"], "anonymous range");
    let a = get(&e, url, ALICE).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (200, "/private/marks for alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_and_ranges_authorize_only_the_version_they_fetched() {
    let ent = LenientEnt::start().await;
    let e = start(&ent);
    let url = "/private/exam-paper";
    assert_eq!(
        get(&e, url, ALICE).await.body,
        "/private/exam-paper for alice"
    );
    // Bob's HEAD fetches (and stores) his whole body; his range request reads it.
    let head = send(&e, reqwest::Method::HEAD, url, BOB).await;
    assert_eq!(head.status, 200);
    let part = get(
        &e,
        url,
        &[("cookie", "session=bob"), ("range", "bytes=0-7")],
    )
    .await;
    assert_eq!(part.status, 206);
    ent.set_failing(true);
    for (method, headers) in [
        (
            reqwest::Method::GET,
            vec![("cookie", "session=alice"), ("range", "bytes=20-40")],
        ),
        (reqwest::Method::HEAD, vec![("cookie", "session=alice")]),
        (reqwest::Method::GET, vec![("cookie", "session=alice")]),
    ] {
        let r = send(&e, method.clone(), url, &headers).await;
        assert_eq!(r.status, 503, "{method} {headers:?}: {}", r.cache_status);
        assert_not_theirs(&r, &["bob"], &format!("{method} {headers:?}"));
    }
    let part = get(
        &e,
        url,
        &[("cookie", "session=bob"), ("range", "bytes=20-40")],
    )
    .await;
    assert_eq!(part.status, 206, "{}", part.cache_status);
    assert_eq!(part.body, &"/private/exam-paper for bob"[20..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_date_validator_never_serves_one_pupils_body_to_another() {
    // The ENT dates every pupil's page by its template and answers 304 to any
    // If-Modified-Since that matches: asking bob's question with alice's date would make
    // it vouch for alice's bytes.
    let ent = LenientEnt::start().await;
    ent.set_validators(Validators::TemplateDate);
    let e = start(&ent);
    let url = "/private/report";
    assert_eq!(get(&e, url, ALICE).await.body, "/private/report for alice");
    let b = get(&e, url, BOB).await;
    assert_eq!(b.status, 200);
    assert_eq!(b.body, "/private/report for bob", "{}", b.cache_status);
    let anon = get(&e, url, ANON).await;
    assert!(anon.body.contains("login page"), "{}", anon.body);
    // Bob again: given this very version, so the date may stand for it (a 304).
    let b = get(&e, url, BOB).await;
    assert_eq!(b.body, "/private/report for bob");
    assert!(
        b.cache_status.contains("fwd-status=304"),
        "{}",
        b.cache_status
    );
    let a = get(&e, url, ALICE).await;
    assert_eq!(a.body, "/private/report for alice", "{}", a.cache_status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_body_for_every_pupil_is_shared_by_etag_and_never_by_anonymous_visitors() {
    // An ENT that checks who asks before its 304, vouched for by ops.
    let ent = LenientEnt::start().await;
    let e = start_trusting(&ent);
    let url = "/class/exam";
    let body = "/class/exam for the class";
    assert_eq!(get(&e, url, ALICE).await.body, body);
    // Bob asks with the stored strong ETag (`trust_strong_etags`): the ENT's 304 says his
    // version is the stored one (same bytes), so the stored body is his.
    let b = get(&e, url, BOB).await;
    assert_eq!(b.body, body);
    assert!(
        b.cache_status.contains("fwd-status=304"),
        "{}",
        b.cache_status
    );
    // An anonymous visitor gets the login page; it does not push the paper out.
    let anon = get(&e, url, ANON).await;
    assert!(anon.body.contains("login page"));
    let c = get(&e, url, CAROL).await;
    assert_eq!(c.body, body);
    assert!(
        c.cache_status.contains("fwd-status=304"),
        "{}",
        c.cache_status
    );
    ent.set_failing(true);
    for who in [ALICE, BOB, CAROL] {
        let r = get(&e, url, who).await;
        assert_eq!((r.status, r.body.as_str()), (200, body), "{who:?}");
    }
    // The anonymous visitor was given the login page, not the paper.
    let anon = get(&e, url, ANON).await;
    assert_eq!(anon.status, 503, "{}", anon.cache_status);
    assert!(!anon.body.contains("for the class"), "{}", anon.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_answers_each_pupil_their_own_body_is_no_longer_stored() {
    let ent = LenientEnt::start().await;
    let e = start(&ent);
    let url = "/private/timetable";
    for who in [ALICE, BOB, ALICE] {
        get(&e, url, who).await;
    }
    // Two versions current at once (alice's came back after bob's): per-credential
    // variants, stored no more.
    let a = get(&e, url, ALICE).await;
    assert_eq!(a.body, "/private/timetable for alice");
    assert!(
        a.cache_status.contains("per-credential"),
        "{}",
        a.cache_status
    );
    ent.set_failing(true);
    for who in [ALICE, BOB, ANON] {
        let r = get(&e, url, who).await;
        assert_eq!(r.status, 503, "{who:?}: {}", r.cache_status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_a_lenient_ent_reads_makes_the_request_credentialed() {
    let ent = LenientEnt::start().await;
    let e = start(&ent);
    // ecluse's own cookie, then bob's session however a lenient parser finds it.
    let spellings: &[&[&str]] = &[
        &["ecluse_ent=abc session=bob"],
        &["ecluse_ent=abc  session=bob"],
        &["ecluse_ent=abc,session=bob"],
        &["ecluse_ent=abc\tsession=bob"],
        &["ecluse_ent=\"abc session=bob\""],
        &["ecluse_ent=abc;session=bob"],
        &["ecluse_ent=abc", "session=bob"],
        &["ECLUSE_ENT=abc; session=bob"],
    ];
    for (i, cookies) in spellings.iter().enumerate() {
        let url = format!("/pub/page{i}");
        let mut rb = client().get(e.url(&url));
        for c in cookies.iter() {
            rb = rb.header("cookie", *c);
        }
        let r = rb.send().await.expect("request");
        let cs = r
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = r.text().await.expect("body");
        assert!(
            body.contains("\"user\":\"bob"),
            "{cookies:?}: the ENT read bob: {body}"
        );
        assert!(
            cs.contains("bypass"),
            "{cookies:?} was anonymous to ecluse: {cs}"
        );
        // The next anonymous visitor never gets bob's page.
        let anon = get(&e, &url, ANON).await;
        assert!(
            !anon.body.contains("bob"),
            "{cookies:?}: bob's page was stored for everyone: {}",
            anon.body
        );
    }
    // ecluse's own cookie alone, in its own form, stays anonymous (and shares the cache).
    let r = get(&e, "/pub/plain", &[("cookie", "ecluse_ent=abc.def-_")]).await;
    assert!(
        r.cache_status.contains("fwd=uri-miss"),
        "{}",
        r.cache_status
    );
    let r = get(&e, "/pub/plain", ANON).await;
    assert!(
        r.cache_status.starts_with("ecluse; hit"),
        "{}",
        r.cache_status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_that_does_not_name_the_stored_version_is_an_error_not_a_body() {
    let ent = LenientEnt::start().await;
    let e = start(&ent);
    let url = "/private/exam-copy";
    assert_eq!(
        get(&e, url, ALICE).await.body,
        "/private/exam-copy for alice"
    );
    // By default bob is asked without alice's validators: nothing for a careless ENT to
    // say 304 to.
    ent.set_careless_304(true);
    let b = get(&e, url, BOB).await;
    assert_eq!(b.body, "/private/exam-copy for bob", "{}", b.cache_status);
    // With `trust_strong_etags` the tag goes to the ENT for him, and the ENT says 304 to
    // bob's question about alice's ETag, under bob's own ETag.
    let ent = LenientEnt::start().await;
    let e = start_trusting(&ent);
    assert_eq!(
        get(&e, url, ALICE).await.body,
        "/private/exam-copy for alice"
    );
    ent.set_careless_304(true);
    let b = get(&e, url, BOB).await;
    assert!(b.status >= 500, "{} {}", b.status, b.cache_status);
    assert_not_theirs(&b, &["alice"], "bob after a careless 304");
    // Nothing was updated: once the ENT is sane, bob gets his own body.
    ent.set_careless_304(false);
    let b = get(&e, url, BOB).await;
    assert_eq!(b.body, "/private/exam-copy for bob");
}

async fn purge(e: &Ecluse, body: &str) {
    let r = client()
        .post(e.admin_url("/admin/cache/purge"))
        .body(body.to_string())
        .send()
        .await
        .expect("purge");
    let status = r.status().as_u16();
    assert_eq!(
        status,
        200,
        "{body}: {}",
        r.text().await.unwrap_or_default()
    );
}

/// `req` while the ENT holds it: once the ENT has it (recorded, not answered), `meanwhile`
/// runs, then the ENT answers. Returns `req`'s answer.
async fn while_in_flight(
    ent: &LenientEnt,
    path: &str,
    req: impl std::future::Future<Output = Answer>,
    meanwhile: impl AsyncFnOnce(),
) -> Answer {
    let before = ent.hits_on(path);
    ent.set_holding(true);
    let (a, ()) = tokio::join!(req, async {
        eventually("the request at the ENT", DEADLINE, async || {
            ent.hits_on(path) > before
        })
        .await;
        meanwhile().await;
        ent.set_holding(false);
    });
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_racing_a_fetch_never_hands_on_what_it_removed() {
    let ent = LenientEnt::start().await;
    let e = start(&ent);
    for (url, scope) in [
        ("/private/race/one", r#"{"url": "/private/race/one"}"#),
        ("/private/race2/two", r#"{"prefix": "/private/race2/"}"#),
    ] {
        // Bob's copy is stored; alice's fetch is at the ENT when ops purge the URL.
        assert_eq!(get(&e, url, BOB).await.body, format!("{url} for bob"));
        let a = while_in_flight(&ent, url, get(&e, url, ALICE), async || {
            purge(&e, scope).await
        })
        .await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, &*format!("{url} for alice"))
        );
        ent.set_failing(true);
        // Bob's copy was purged and alice's answer (if kept) is hers alone: bob, carol and
        // anonymous visitors get the error, never a body.
        for (who, name) in [(BOB, "bob"), (CAROL, "carol"), (ANON, "anonymous")] {
            let r = get(&e, url, who).await;
            assert_eq!(
                r.status, 503,
                "{scope} {name}: {} {}",
                r.body, r.cache_status
            );
            assert_not_theirs(&r, &["alice", "bob"], &format!("{scope} {name}"));
        }
        // Alice may have her own answer stale (it came after the purge), nothing else.
        let a = get(&e, url, ALICE).await;
        assert!(
            a.status == 503 || (a.status, a.body.as_str()) == (200, &*format!("{url} for alice")),
            "{scope} alice: {} {} {}",
            a.status,
            a.body,
            a.cache_status
        );
        assert_not_theirs(&a, &["bob"], &format!("{scope} alice"));

        // The other order: alice's own copy is looked up, her fetch is at the ENT when
        // the URL is purged, and then the ENT fails. The copy she had is purged: she gets
        // the error, not the copy ops removed while she waited.
        ent.set_failing(false);
        let a = get(&e, url, ALICE).await;
        assert_eq!(a.body, format!("{url} for alice"));
        let a = while_in_flight(&ent, url, get(&e, url, ALICE), async || {
            purge(&e, scope).await;
            ent.set_failing(true);
        })
        .await;
        assert_eq!(
            a.status, 503,
            "{scope} alice in flight: {} {}",
            a.body, a.cache_status
        );
        for (who, name) in [(ALICE, "alice"), (BOB, "bob"), (ANON, "anonymous")] {
            let r = get(&e, url, who).await;
            assert_eq!(
                r.status, 503,
                "{scope} {name} after: {} {}",
                r.body, r.cache_status
            );
        }
        ent.set_failing(false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_vary_variant_goes_stale_only_to_the_pupil_and_language_it_was_given() {
    let ent = LenientEnt::start().await;
    ent.set_vary(Some("accept-language"));
    let e = start(&ent);
    let url = "/private/homework";
    let ask = |who: &'static str, lang: &'static str| {
        let cookie = format!("session={who}");
        let e = &e;
        async move {
            let mut h = vec![("cookie", cookie.as_str())];
            if !lang.is_empty() {
                h.push(("accept-language", lang));
            }
            if who.is_empty() {
                h.remove(0);
            }
            get(e, url, &h).await
        }
    };
    // Each variant is replaced once by the other pupil: fr ends as bob's, en as alice's.
    let mut given: Vec<(&str, &str, String)> = Vec::new();
    for (who, lang) in [
        ("alice", "fr"),
        ("bob", "en"),
        ("bob", "fr"),
        ("alice", "en"),
    ] {
        let r = ask(who, lang).await;
        let body = format!("{url} for {who} [{lang}]");
        assert_eq!(r.body, body, "{who} {lang}: {}", r.cache_status);
        given.push((who, lang, body));
    }
    ent.set_failing(true);
    for who in ["alice", "bob", "carol", ""] {
        for lang in ["fr", "en", "de", ""] {
            let r = ask(who, lang).await;
            let ctx = format!(
                "{who:?} {lang:?}: {} {:?} {}",
                r.status, r.body, r.cache_status
            );
            assert!(r.status == 200 || r.status == 503, "{ctx}");
            if r.status == 200 {
                // Only a copy the ENT gave this very pupil in this very language.
                assert!(
                    given
                        .iter()
                        .any(|(w, l, b)| (*w, *l, b) == (who, lang, &r.body)),
                    "{ctx}"
                );
            }
            if r.status == 503 {
                assert!(!r.body.contains(" for "), "{ctx}");
            }
        }
    }
    // Each pupil's latest answer is theirs to have stale, in its own language.
    for (who, lang) in [("alice", "en"), ("bob", "fr")] {
        let r = ask(who, lang).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, &*format!("{url} for {who} [{lang}]")),
            "{}",
            r.cache_status
        );
        assert!(
            r.cache_status.contains("stale-if-error"),
            "{}",
            r.cache_status
        );
    }
}

/// An ENT that answers `If-None-Match` by the tag alone (`set_lazy_304`): with a stored
/// copy of alice's file, neither bob with his own cookie (with alice's ETag or without)
/// nor an anonymous visitor ever gets it, before or during an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_ents_304_never_hands_a_stored_body_to_another_pupil() {
    let ent = LenientEnt::start().await;
    ent.set_lazy_304(true);
    let e = start(&ent);
    let mine = |url: &str, who: &str| format!("{url} for {who}");
    // Bob without any validator: ecluse must not send alice's for him.
    let url = "/private/lazy-report";
    let a = get(&e, url, ALICE).await;
    assert_eq!(a.body, mine(url, "alice"));
    let tag_a = a.etag.clone().expect("alice's ETag");
    for (who, h) in [
        ("anonymous", vec![]),
        (
            "anonymous with alice's tag",
            vec![("if-none-match", tag_a.as_str())],
        ),
    ] {
        let r = get(&e, url, &h).await;
        assert_eq!(r.status, 200, "{who}: {}", r.cache_status);
        assert!(r.body.contains("login page"), "{who}: {}", r.body);
    }
    let b = get(&e, url, BOB).await;
    assert_eq!(
        (b.status, b.body.as_str()),
        (200, mine(url, "bob").as_str()),
        "{}",
        b.cache_status
    );
    // Bob with alice's ETag (read over her shoulder, or guessed from the URL).
    let url = "/private/lazy-exam";
    let a = get(&e, url, ALICE).await;
    let tag_a = a.etag.clone().expect("alice's ETag");
    let b = get(
        &e,
        url,
        &[("cookie", "session=bob"), ("if-none-match", tag_a.as_str())],
    )
    .await;
    assert_eq!(
        (b.status, b.body.as_str()),
        (200, mine(url, "bob").as_str()),
        "{}",
        b.cache_status
    );
    // The same through an outage: whoever the lazy ENT said 304 to gets nothing of
    // alice's when it is down.
    let url = "/private/lazy-marks";
    let a = get(&e, url, ALICE).await;
    let tag_a = a.etag.clone().expect("alice's ETag");
    let c = get(&e, url, CAROL).await;
    assert_eq!(c.body, mine(url, "carol"), "{}", c.cache_status);
    let b = get(
        &e,
        url,
        &[("cookie", "session=bob"), ("if-none-match", tag_a.as_str())],
    )
    .await;
    assert_eq!(b.body, mine(url, "bob"), "{}", b.cache_status);
    let anon = get(&e, url, &[("if-none-match", tag_a.as_str())]).await;
    assert!(anon.body.contains("login page"), "{}", anon.body);
    ent.set_failing(true);
    let tagged_bob = [("cookie", "session=bob"), ("if-none-match", tag_a.as_str())];
    let tagged_anon = [("if-none-match", tag_a.as_str())];
    let dave = [("cookie", "session=dave")];
    for (who, h) in [
        ("carol", CAROL),
        ("bob", BOB),
        ("bob with alice's tag", &tagged_bob[..]),
        ("dave", &dave[..]),
        ("anonymous", ANON),
        ("anonymous with alice's tag", &tagged_anon[..]),
    ] {
        let r = get(&e, url, h).await;
        assert_ne!(r.status, 304, "{who}: {}", r.cache_status);
        assert_not_theirs(&r, &["alice"], &format!("{who} during the outage"));
    }
}

/// A client's own validators: ecluse never answers 304 about a stored copy to
/// credentials the ENT did not give that copy (a 304 would tell bob that alice's tag
/// names the file stored for this URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_304_tells_a_pupil_that_a_tag_names_another_pupils_stored_file() {
    let ent = LenientEnt::start().await;
    ent.set_lazy_304(true);
    let e = start(&ent);
    let url = "/private/lazy-oracle";
    let a = get(&e, url, ALICE).await;
    let tag_a = a.etag.clone().expect("alice's ETag");
    // Alice herself may be told her copy is unchanged (the tag is right).
    let a = get(
        &e,
        url,
        &[
            ("cookie", "session=alice"),
            ("if-none-match", tag_a.as_str()),
        ],
    )
    .await;
    assert_eq!(a.status, 304, "{}", a.cache_status);
    let tagged_bob = [("cookie", "session=bob"), ("if-none-match", tag_a.as_str())];
    let tagged_anon = [("if-none-match", tag_a.as_str())];
    let listed = format!("\"x\", W/\"y\", {tag_a}");
    let tagged_carol = [
        ("cookie", "session=carol"),
        ("if-none-match", listed.as_str()),
    ];
    let cases: [(&str, &[(&str, &str)]); 3] = [
        ("bob", &tagged_bob),
        ("anonymous", &tagged_anon),
        ("carol, alice's tag in a list", &tagged_carol),
    ];
    for (who, h) in cases {
        let r = get(&e, url, h).await;
        assert_ne!(
            r.status, 304,
            "{who} learnt alice's tag: {}",
            r.cache_status
        );
        assert_not_theirs(&r, &["alice"], who);
    }
    // Nor during an outage.
    ent.set_failing(true);
    for (who, h) in cases {
        let r = get(&e, url, h).await;
        assert_ne!(r.status, 304, "{who} in the outage: {}", r.cache_status);
        assert_not_theirs(&r, &["alice"], who);
    }
    // Bob's and carol's answers replaced alice's copy since: she is not told 304 either.
    let a = get(
        &e,
        url,
        &[
            ("cookie", "session=alice"),
            ("if-none-match", tag_a.as_str()),
        ],
    )
    .await;
    assert_ne!(a.status, 304, "{}", a.cache_status);
    assert_not_theirs(&a, &["bob", "carol"], "alice in the outage");
}

/// One body for every pupil, by default (no `trust_strong_etags`): pupils the ENT never
/// gave the stored copy are asked without its validators, and their full answer, the
/// same bytes, authorizes them for it (through an outage too). With
/// `trust_strong_etags` an ENT that checks credentials answers them 304 (no body), and a
/// pupil given their own body is still never given another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_etags_are_sent_for_strangers_only_when_ops_trust_the_ent() {
    let ent = LenientEnt::start().await;
    let e = start(&ent);
    let url = "/class/quiz";
    let body = "/class/quiz for the class";
    assert_eq!(get(&e, url, ALICE).await.body, body);
    let b = get(&e, url, BOB).await;
    assert_eq!(b.body, body);
    assert!(
        b.cache_status.contains("fwd-status=200"),
        "bob was asked with alice's validators: {}",
        b.cache_status
    );
    let sent_bob = ent
        .seen()
        .into_iter()
        .rev()
        .find(|s| s.user.as_deref() == Some("bob"));
    let sent_bob = sent_bob.expect("bob's request");
    assert!(
        !sent_bob
            .headers
            .iter()
            .any(|(k, _)| k == "if-none-match" || k == "if-modified-since"),
        "{:?}",
        sent_bob.headers
    );
    // Bob's own answer was these bytes: his now, cheaply (a 304) and through an outage.
    let b = get(&e, url, BOB).await;
    assert!(
        b.cache_status.contains("fwd-status=304"),
        "{}",
        b.cache_status
    );
    ent.set_failing(true);
    for who in [ALICE, BOB] {
        let r = get(&e, url, who).await;
        assert_eq!((r.status, r.body.as_str()), (200, body), "{who:?}");
    }
    let c = get(&e, url, CAROL).await;
    assert_eq!(c.status, 503, "{}", c.cache_status);

    // Trusted: the cheap path for strangers, and per-pupil bodies stay apart.
    let ent = LenientEnt::start().await;
    let e = start_trusting(&ent);
    assert_eq!(get(&e, url, ALICE).await.body, body);
    let b = get(&e, url, BOB).await;
    assert_eq!(b.body, body);
    assert!(
        b.cache_status.contains("fwd-status=304"),
        "{}",
        b.cache_status
    );
    let purl = "/private/trusted";
    assert_eq!(
        get(&e, purl, ALICE).await.body,
        "/private/trusted for alice"
    );
    let b = get(&e, purl, BOB).await;
    assert_eq!(b.body, "/private/trusted for bob", "{}", b.cache_status);
    ent.set_failing(true);
    let a = get(&e, purl, ALICE).await;
    assert_not_theirs(&a, &["bob"], "alice, trusted");
    let c = get(&e, purl, CAROL).await;
    assert_eq!(c.status, 503, "{}", c.cache_status);
}
