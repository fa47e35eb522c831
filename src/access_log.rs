//! The access log: one JSON object per line and per request.
//!
//! Requests never wait on the disk: lines go through a bounded channel to one writer
//! thread. If the writer falls behind by more than `QUEUE` lines, new lines are dropped and
//! counted (`ecluse_access_log_dropped_total`) rather than slowing the proxy during a surge.

use std::borrow::Cow;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;

use crate::config::runtime::AccessLogTarget;

const QUEUE: usize = 65_536;

enum Msg {
    Line(String),
    Target(AccessLogTarget),
    /// Close and open the target again (log rotation: the file was renamed).
    Reopen,
}

pub struct AccessLogger {
    tx: SyncSender<Msg>,
    /// The target last sent to the writer, so a reload only reopens on change.
    current: Mutex<AccessLogTarget>,
}

/// One request as logged. Field names are part of the documented log format.
#[derive(serde::Serialize)]
pub struct Entry<'a> {
    /// RFC 3339 UTC time the request started.
    pub time: String,
    /// The request's id (`X-Request-Id`, on the response, the ENT's request and pages).
    pub request_id: &'a str,
    pub client_ip: String,
    pub method: &'a str,
    pub path: &'a str,
    /// The query string, with the values of `access_log.redact_query` parameters
    /// replaced by `REDACTED`; null without a query.
    pub query: Option<Cow<'a, str>>,
    pub host: &'a str,
    /// The `User-Agent`, cut at 256 bytes; null without one.
    pub user_agent: Option<&'a str>,
    pub status: u16,
    /// Route name, or null when none matched.
    pub route: Option<&'a str>,
    /// Origin server `ip:port` of the last attempt (the one that answered, or the one
    /// that could not be reached), or null when none was tried.
    pub upstream: Option<String>,
    pub duration_ms: f64,
    /// Response body bytes sent to the client.
    pub bytes_sent: usize,
    /// Upstream attempts made (retries + 1), 0 when none.
    pub attempts: u32,
    /// What ecluse decided when it answered itself (`no_route`, `origin_busy`, …).
    pub decision: Option<&'a str>,
    /// Rate-limit result when a limit refused or would have refused (`limited`,
    /// `dry_run_limited`), else null.
    pub rate_limit: Option<&'a str>,
    /// What the waiting room did: `direct` (let in, spare capacity), `queued`,
    /// `admitted` (turn came), `inside` (already admitted), `status` (queue poll), …
    pub queue: Option<&'a str>,
    /// What the cache did (cacheable routes only): `hit`, `stale`, `revalidated`,
    /// `expired`, `miss`, `bypass`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'a str>,
    /// The degradation level in force when the request ended (when levels are declared).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<&'a str>,
    /// Internal error summary, when the request failed.
    pub error: Option<String>,
}

impl AccessLogger {
    pub fn start(target: AccessLogTarget) -> AccessLogger {
        let (tx, rx) = sync_channel(QUEUE);
        let initial = target.clone();
        std::thread::Builder::new()
            .name("ecluse-access-log".into())
            .spawn(move || writer(rx, initial))
            .map_err(|e| log::error!("cannot start the access log writer: {e}"))
            .ok();
        AccessLogger {
            tx,
            current: Mutex::new(target),
        }
    }

    /// Switch target after a reload (no-op when unchanged).
    pub fn set_target(&self, target: &AccessLogTarget) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if *cur != *target {
            *cur = target.clone();
            let _ = self.tx.send(Msg::Target(target.clone()));
        }
    }

    /// Reopen the log file after a rotation (SIGUSR1, SIGHUP): lines queued before the
    /// call go to the old file, every later one to the new file.
    pub fn reopen(&self) {
        if self.tx.send(Msg::Reopen).is_err() {
            log::error!("access log writer gone: cannot reopen the log file");
        }
    }

    pub fn enabled(&self) -> bool {
        !matches!(
            *self.current.lock().unwrap_or_else(|p| p.into_inner()),
            AccessLogTarget::Off
        )
    }

    pub fn log(&self, e: &Entry) {
        let Ok(line) = serde_json::to_string(e) else {
            return;
        };
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                crate::metrics::get().access_log_dropped.inc();
            }
        }
    }
}

fn open(target: &AccessLogTarget) -> Option<Box<dyn Write + Send>> {
    match target {
        AccessLogTarget::Off => None,
        AccessLogTarget::Stdout => Some(Box::new(std::io::stdout())),
        AccessLogTarget::File(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Some(Box::new(f)),
            Err(e) => {
                log::error!(
                    "cannot open access log {}: {e}; logging to stdout",
                    p.display()
                );
                Some(Box::new(std::io::stdout()))
            }
        },
    }
}

fn writer(rx: Receiver<Msg>, target: AccessLogTarget) {
    let mut out = open(&target).map(|w| std::io::BufWriter::with_capacity(64 * 1024, w));
    let mut current = target;
    while let Ok(msg) = rx.recv() {
        let mut handle =
            |msg: Msg, out: &mut Option<std::io::BufWriter<Box<dyn Write + Send>>>| match msg {
                Msg::Line(l) => {
                    if let Some(w) = out.as_mut() {
                        let _ = w.write_all(l.as_bytes());
                        let _ = w.write_all(b"\n");
                    }
                }
                Msg::Target(t) => {
                    if let Some(w) = out.as_mut() {
                        let _ = w.flush();
                    }
                    *out = open(&t).map(|w| std::io::BufWriter::with_capacity(64 * 1024, w));
                    current = t;
                }
                Msg::Reopen => {
                    if let Some(w) = out.as_mut() {
                        let _ = w.flush();
                    }
                    // Stdout is not reopened (it is not a file ecluse opened).
                    if matches!(current, AccessLogTarget::File(_)) {
                        *out =
                            open(&current).map(|w| std::io::BufWriter::with_capacity(64 * 1024, w));
                    }
                }
            };
        handle(msg, &mut out);
        // Drain what is queued, then flush once: one syscall per burst, not per line.
        while let Ok(m) = rx.try_recv() {
            handle(m, &mut out);
        }
        if let Some(w) = out.as_mut() {
            let _ = w.flush();
        }
    }
}

/// The query as logged: each `name=value` pair (separated by `&` or `;`) whose name,
/// percent-decoded (`+` as space), without case and without a trailing `[...]`, is in
/// `redact` (lowercase) gets the value `REDACTED`. Other bytes are kept as sent.
pub fn redact_query<'q>(query: &'q str, redact: &[String]) -> Cow<'q, str> {
    if redact.is_empty() {
        return Cow::Borrowed(query);
    }
    let hidden = |name: &str| {
        let decoded = percent_decode_lower(name);
        let base = match decoded.find('[') {
            Some(i) => &decoded[..i],
            None => decoded.as_str(),
        };
        redact.iter().any(|r| r == base.trim())
    };
    let mut out = String::new();
    let mut changed = false;
    let mut rest = query;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let pair = &rest[..end];
        match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() && hidden(name) => {
                out.push_str(name);
                out.push_str("=REDACTED");
                changed = true;
            }
            _ => out.push_str(pair),
        }
        if end == rest.len() {
            break;
        }
        out.push_str(&rest[end..end + 1]);
        rest = &rest[end + 1..];
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(query)
    }
}

/// `%XX` decoded (invalid escapes kept), `+` as a space, lowercased; bytes that are not
/// UTF-8 after decoding are replaced.
fn percent_decode_lower(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::rfc3339;
    use crate::config::runtime::DEFAULT_REDACT;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn query_redaction() {
        let names: Vec<String> = DEFAULT_REDACT.iter().map(|s| s.to_string()).collect();
        assert_eq!(redact_query("a=1&b=2", &names), "a=1&b=2");
        assert_eq!(
            redact_query("service=x&ticket=ST-123-abc", &names),
            "service=x&ticket=REDACTED"
        );
        // Other spellings of the same name: case, percent-encoding, array form, `;`.
        assert_eq!(redact_query("TOKEN=s3cr3t", &names), "TOKEN=REDACTED");
        assert_eq!(redact_query("to%6Ben=s3cr3t", &names), "to%6Ben=REDACTED");
        assert_eq!(
            redact_query("password[]=x&q=1", &names),
            "password[]=REDACTED&q=1"
        );
        assert_eq!(redact_query("q=1;sid=abc", &names), "q=1;sid=REDACTED");
        assert_eq!(
            redact_query("token=a&token=b", &names),
            "token=REDACTED&token=REDACTED"
        );
        // A name that only contains a redacted one is kept; an empty value has nothing to hide.
        assert_eq!(redact_query("tokens=1&token=", &names), "tokens=1&token=");
        assert_eq!(redact_query("%zz=1&%", &names), "%zz=1&%");
        assert_eq!(redact_query("ticket=1", &[]), "ticket=1");
    }

    #[test]
    fn file_target_gets_lines() {
        let dir = std::env::temp_dir().join(format!("ecluse-al-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let l = AccessLogger::start(AccessLogTarget::File(path.clone()));
        l.log(&Entry {
            time: rfc3339(UNIX_EPOCH),
            request_id: "r1",
            client_ip: "192.0.2.1".into(),
            method: "GET",
            path: "/",
            query: None,
            host: "ent",
            user_agent: None,
            status: 200,
            route: Some("ent"),
            upstream: None,
            duration_ms: 1.5,
            bytes_sent: 10,
            attempts: 1,
            decision: None,
            rate_limit: None,
            queue: None,
            cache: None,
            level: None,
            error: None,
        });
        // Switching target flushes and closes the file; poll for the line with a deadline.
        l.set_target(&AccessLogTarget::Off);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains("\"status\":200") {
                let v: serde_json::Value =
                    serde_json::from_str(text.lines().next().unwrap_or("")).expect("json line");
                assert_eq!(v["route"], "ent");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::yield_now();
        }
    }
}
