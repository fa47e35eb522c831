//! What the simulated ENT serves: French HTML pages and versioned assignment PDFs.
//!
//! Content is deterministic (same path, same page; same file id and version, same bytes)
//! so tests can compare bodies and caches can be checked byte for byte.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Smallest and largest assignment file, in bytes ("between 100 KB and 5 MB").
pub const FILE_MIN_LEN: usize = 100_000;
pub const FILE_MAX_LEN: usize = 5_000_000;

const PDF_TRAILER: &[u8] = b"\n%%EOF\n";

/// SplitMix64: a cheap, well-mixed deterministic hash for sizes and filler bytes.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a, to derive page variety from the request path.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Body length of assignment `id`: fixed per id (it does not change with the version, like
/// a teacher fixing a typo), spread over [`FILE_MIN_LEN`]..=[`FILE_MAX_LEN`].
pub fn file_len(id: usize) -> usize {
    let span = (FILE_MAX_LEN - FILE_MIN_LEN + 1) as u64;
    // `span` fits in usize, so the remainder does too.
    FILE_MIN_LEN + (splitmix64(id as u64) % span) as usize
}

/// Generates the bytes of assignment `id` at `version`: a `%PDF-1.4` header naming the
/// file, pseudo-random filler seeded by (id, version), and an `%%EOF` trailer.
pub fn file_body(id: usize, version: u64) -> Bytes {
    let len = file_len(id);
    let mut out = Vec::with_capacity(len);
    let _ = write!(
        VecWriter(&mut out),
        "%PDF-1.4\n%\u{e2}\u{e3}\n1 0 obj << /Title (Devoir {id} version {version}) /Producer (ecluse demo) >> endobj\n"
    );
    // One 4 KiB block of filler, repeated with a per-block twist so that no two blocks of
    // a file are identical (keeps naive dedup/compression from flattering benchmarks).
    let mut seed = splitmix64(((id as u64) << 32) ^ version);
    let mut block = [0u8; 4096];
    for chunk in block.chunks_mut(8) {
        seed = splitmix64(seed);
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
    let body_end = len - PDF_TRAILER.len();
    let mut n: u8 = 0;
    while out.len() < body_end {
        let take = (body_end - out.len()).min(block.len());
        block[0] = n;
        n = n.wrapping_add(1);
        out.extend_from_slice(&block[..take]);
    }
    out.truncate(body_end);
    out.extend_from_slice(PDF_TRAILER);
    Bytes::from(out)
}

/// `fmt::Write` adapter so `write!` can append to a byte vector.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A snapshot of one assignment file's validators (and body when asked for).
#[derive(Debug, Clone)]
pub struct FileSnapshot {
    pub id: usize,
    pub version: u64,
    pub last_modified: SystemTime,
    pub body: Option<Bytes>,
}

impl FileSnapshot {
    /// Strong ETag, e.g. `"a3-v2"`.
    pub fn etag(&self) -> String {
        format!("\"a{}-v{}\"", self.id, self.version)
    }
}

#[derive(Debug)]
struct FileSlot {
    /// False for an exam slot no teacher has uploaded to yet: it answers 404.
    published: bool,
    version: u64,
    last_modified: SystemTime,
    /// Generated on first full fetch of this version and kept: later fetches clone the
    /// `Bytes` handle, not the data.
    body: Option<Bytes>,
}

/// The assignment files `1..=n`, each with a version that a "teacher" can bump.
#[derive(Debug)]
pub struct FileCatalog {
    slots: Vec<Mutex<FileSlot>>,
}

/// Truncates to whole seconds: HTTP dates have no sub-second part, and comparing
/// `If-Modified-Since` against a finer time would never match.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

impl FileCatalog {
    /// `n` files at version 1, last modified one day before `now`.
    #[cfg(test)]
    pub fn new(n: usize, now: SystemTime) -> FileCatalog {
        FileCatalog::with_exam_slots(n, 0, now)
    }

    /// `n` files at version 1, then `exams` unpublished slots (ids `n + 1 ..= n + exams`)
    /// that answer 404 until a teacher uploads a paper into them ([`publish`](Self::publish)).
    pub fn with_exam_slots(n: usize, exams: usize, now: SystemTime) -> FileCatalog {
        let initial = whole_seconds(now - Duration::from_secs(86_400));
        FileCatalog {
            slots: (0..n + exams)
                .map(|i| {
                    Mutex::new(FileSlot {
                        published: i < n,
                        version: if i < n { 1 } else { 0 },
                        last_modified: initial,
                        body: None,
                    })
                })
                .collect(),
        }
    }

    /// Number of files.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, id: usize) -> Option<std::sync::MutexGuard<'_, FileSlot>> {
        let slot = self.slots.get(id.checked_sub(1)?)?;
        Some(slot.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Current version of file `id` (None when out of range). With `with_body`, the body
    /// is generated if needed (a few milliseconds for the largest file, once per version)
    /// and returned consistently with the validators.
    pub fn get(&self, id: usize, with_body: bool) -> Option<FileSnapshot> {
        let mut slot = self.slot(id)?;
        if !slot.published {
            return None;
        }
        let body = if with_body {
            let version = slot.version;
            Some(
                slot.body
                    .get_or_insert_with(|| file_body(id, version))
                    .clone(),
            )
        } else {
            None
        };
        Some(FileSnapshot {
            id,
            version: slot.version,
            last_modified: slot.last_modified,
            body,
        })
    }

    /// A teacher re-uploads file `id`: new version, new bytes, and a `Last-Modified` that
    /// is strictly later than the previous one even within the same second. Returns the
    /// new version, or None for an unknown id.
    pub fn bump(&self, id: usize, now: SystemTime) -> Option<u64> {
        let mut slot = self.slot(id)?;
        slot.version += 1;
        slot.published = true;
        slot.last_modified = whole_seconds(now).max(slot.last_modified + Duration::from_secs(1));
        slot.body = None;
        Some(slot.version)
    }

    /// A teacher uploads `body` as the new content of file `id` (an exam slot or an
    /// existing file): new version, these exact bytes, a later `Last-Modified`. Returns
    /// the new version, or None for an unknown id.
    pub fn publish(&self, id: usize, body: Bytes, now: SystemTime) -> Option<u64> {
        let mut slot = self.slot(id)?;
        slot.version += 1;
        slot.published = true;
        slot.last_modified = whole_seconds(now).max(slot.last_modified + Duration::from_secs(1));
        slot.body = Some(body);
        Some(slot.version)
    }
}

/// Escapes text for inclusion in HTML element content or a quoted attribute.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn layout(title: &str, main: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"fr\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · ENT Collège Jean Moulin</title></head>\n<body>\n\
<header><h1>ENT Collège Jean Moulin</h1><nav><ul>\
<li><a href=\"/pages/cahier-de-textes\">Cahier de textes</a></li>\
<li><a href=\"/pages/messagerie\">Messagerie</a></li>\
<li><a href=\"/pages/vie-scolaire\">Vie scolaire</a></li>\
<li><a href=\"/pages/notes\">Notes</a></li>\
<li><a href=\"/visio\">Classe virtuelle</a></li>\
<li><a href=\"/login\">Se connecter</a></li>\
</ul></nav></header>\n<main>\n{main}\n</main>\n\
<footer><p>Environnement numérique de travail — serveur de démonstration ecluse.</p></footer>\n\
</body></html>\n"
    )
}

const SUBJECTS: [&str; 10] = [
    "Mathématiques",
    "Français",
    "Histoire-Géographie",
    "Physique-Chimie",
    "SVT",
    "Anglais",
    "Espagnol",
    "EPS",
    "Technologie",
    "Arts plastiques",
];

const TASKS: [&str; 6] = [
    "Exercices 12 à 15 page 87",
    "Lire le chapitre 4 et répondre aux questions",
    "Rédiger un paragraphe argumenté",
    "Réviser pour le contrôle de jeudi",
    "Préparer l'exposé en binôme",
    "Terminer la fiche de TP",
];

const DAYS: [&str; 5] = ["lundi", "mardi", "mercredi", "jeudi", "vendredi"];

/// The page for `GET /` or `GET /pages/...`: a cahier de textes with 10 to 49 entries
/// (≈ 2.5-8 KB) chosen from the path, linking to assignment files `1..=files`.
pub fn page_html(path: &str, files: usize) -> String {
    let h = fnv1a(path);
    let entries = 10 + (h % 40) as usize;
    let mut main = String::with_capacity(entries * 160 + 512);
    let _ = write!(
        main,
        "<h2>Cahier de textes</h2>\n<p>Page <code>{}</code>. \
Nouveaux messages dans votre <a href=\"/pages/messagerie\">Messagerie</a> : {}.</p>\n<ul>\n",
        html_escape(path),
        h % 7
    );
    for i in 0..entries {
        let k = splitmix64(h ^ i as u64);
        let subject = SUBJECTS[(k % SUBJECTS.len() as u64) as usize];
        let task = TASKS[((k >> 8) % TASKS.len() as u64) as usize];
        let day = DAYS[((k >> 16) % DAYS.len() as u64) as usize];
        let _ = write!(main, "<li><b>{subject}</b> — pour {day} : {task}");
        if files > 0 {
            let id = 1 + ((k >> 24) % files as u64) as usize;
            let _ = write!(
                main,
                " <a href=\"/files/assignments/{id}.pdf\">énoncé (PDF)</a>"
            );
        }
        main.push_str("</li>\n");
    }
    main.push_str("</ul>\n<p><a href=\"/visio\">Rejoindre la classe virtuelle</a></p>");
    layout("Cahier de textes", &main)
}

/// `GET /login`: the login form (posts to `/login`).
pub fn login_html() -> String {
    layout(
        "Connexion",
        "<h2>Connexion</h2>\n<form method=\"post\" action=\"/login\">\
<label>Identifiant <input name=\"user\" autocomplete=\"username\"></label>\
<label>Mot de passe <input name=\"password\" type=\"password\" autocomplete=\"current-password\"></label>\
<button type=\"submit\">Se connecter</button></form>",
    )
}

/// `GET /visio`: the virtual classroom page (cheap to render; the CPU cost is simulated
/// separately).
pub fn visio_html(path: &str) -> String {
    layout(
        "Classe virtuelle",
        &format!(
            "<h2>Classe virtuelle</h2>\n<p>Salle <code>{}</code> : connexion au flux vidéo établie.</p>",
            html_escape(path)
        ),
    )
}

/// Small error pages, in French like the rest of the ENT.
pub fn error_html(status: u16, message: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"fr\"><head><meta charset=\"utf-8\"><title>{status}</title></head>\
<body><h1>{status}</h1><p>{}</p><p><a href=\"/\">Retour à l'accueil</a></p></body></html>\n",
        html_escape(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lengths_in_range_and_deterministic() {
        for id in 1..200 {
            let n = file_len(id);
            assert!((FILE_MIN_LEN..=FILE_MAX_LEN).contains(&n), "id {id}: {n}");
            assert_eq!(n, file_len(id));
        }
    }

    #[test]
    fn file_body_is_a_pdf_of_the_right_length_and_changes_with_version() {
        let id = (1..100).min_by_key(|&i| file_len(i)).unwrap_or(1);
        let v1 = file_body(id, 1);
        assert_eq!(v1.len(), file_len(id));
        assert!(v1.starts_with(b"%PDF-1.4"));
        assert!(v1.ends_with(b"%%EOF\n"));
        assert_eq!(v1, file_body(id, 1));
        assert_ne!(v1, file_body(id, 2));
    }

    #[test]
    fn catalog_bump_changes_validators() {
        let now = SystemTime::now();
        let c = FileCatalog::new(3, now);
        let a = c.get(2, false).expect("file 2");
        assert_eq!(a.etag(), "\"a2-v1\"");
        assert!(a.body.is_none());
        assert_eq!(c.bump(2, now), Some(2));
        let b = c.get(2, true).expect("file 2");
        assert_eq!(b.etag(), "\"a2-v2\"");
        assert!(b.last_modified > a.last_modified);
        assert!(b.body.is_some());
        assert!(c.get(0, false).is_none());
        assert!(c.get(4, false).is_none());
        assert_eq!(c.bump(4, now), None);
    }

    #[test]
    fn exam_slots_are_404_until_a_paper_is_published() {
        let now = SystemTime::now();
        let c = FileCatalog::with_exam_slots(2, 2, now);
        assert_eq!(c.len(), 4);
        assert!(c.get(2, false).is_some());
        assert!(c.get(3, false).is_none());
        let paper = Bytes::from_static(b"%PDF-1.4 examen blanc");
        assert_eq!(c.publish(3, paper.clone(), now), Some(1));
        let s = c.get(3, true).expect("published");
        assert_eq!(s.etag(), "\"a3-v1\"");
        assert_eq!(s.body, Some(paper));
        assert!(c.get(4, false).is_none());
        assert_eq!(c.publish(5, Bytes::new(), now), None);
    }

    #[test]
    fn pages_are_small_and_escaped() {
        for p in ["/", "/pages/a", "/pages/<script>", "/pages/messagerie"] {
            let html = page_html(p, 20);
            assert!((2_000..=8_192).contains(&html.len()), "{p}: {}", html.len());
            assert!(html.contains("Cahier de textes"));
            assert!(!html.contains("<script>"));
        }
        assert!(!page_html("/", 0).contains("/files/assignments/"));
    }
}
