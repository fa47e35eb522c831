//! Wall-clock time as ecluse counts it, in one place: unix milliseconds (room state,
//! tickets, expiries, the fleet's shared state), unix seconds (certificate dates,
//! gauges), and RFC 3339 / HTTP-date text (logs, the admin API, `check` messages).
//! A clock before 1970 reads as 0, never a panic. Local times for pages (time zones)
//! are `pages::time`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `t` in unix ms (what [`now_ms`] reads, for a time already taken).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `t` in unix seconds with their fraction (gauges, the admin API's `loaded_at`).
pub fn unix_secs_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Now, in whole unix seconds (signed, like certificates' validity dates).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Unix seconds as an HTTP date (`Tue, 01 Dec 2026 17:00:00 GMT`); before 1970 reads 1970.
pub fn http_date(ts: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(ts.max(0) as u64))
}

/// RFC 3339 UTC timestamp with milliseconds, without pulling a date crate.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let ms = d.subsec_millis();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

/// Unix ms as RFC 3339 (an expiry for the log).
pub fn rfc3339_ms(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

/// An RFC 3339 time (`2026-12-01T18:00:00+01:00`, `2026-12-01T17:00:00Z`) as unix ms.
pub fn parse_rfc3339_ms(t: &str) -> Result<u64, String> {
    let bad = |why: &str| {
        format!("`{t}` is not an RFC 3339 time like `2026-12-01T18:00:00+01:00`: {why}")
    };
    let (utc, offset_s) = match t
        .len()
        .checked_sub(6)
        .and_then(|i| t.get(i..).map(|o| (i, o)))
    {
        Some((i, o)) if (o.starts_with('+') || o.starts_with('-')) && o.as_bytes()[3] == b':' => {
            let num = |r: std::ops::Range<usize>| {
                o.get(r)
                    .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| d.parse::<i64>().ok())
            };
            let (Some(h), Some(m)) = (num(1..3), num(4..6)) else {
                return Err(bad("bad time zone offset"));
            };
            if h > 23 || m > 59 {
                return Err(bad("bad time zone offset"));
            }
            let sign = if o.starts_with('-') { -1 } else { 1 };
            (format!("{}Z", &t[..i]), sign * (h * 3600 + m * 60))
        }
        _ if t.ends_with('Z') || t.ends_with('z') => (t.to_string(), 0),
        _ => return Err(bad("it needs a time zone (`Z` or an offset like `+01:00`)")),
    };
    let local = humantime::parse_rfc3339_weak(&utc).map_err(|e| bad(&e.to_string()))?;
    let ms = local
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad("before 1970"))?
        .as_millis() as i64
        - offset_s * 1000;
    u64::try_from(ms).map_err(|_| bad("before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2020-03-16T08:00:00Z, the Monday the ENTs fell over.
        let t = UNIX_EPOCH + Duration::from_secs(1_584_345_600);
        assert_eq!(rfc3339(t), "2020-03-16T08:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.123Z");
    }

    #[test]
    fn rfc3339_times_with_offsets() {
        let utc = parse_rfc3339_ms("2026-12-01T17:00:00Z").expect("utc");
        assert_eq!(utc, 1_796_144_400_000);
        assert_eq!(parse_rfc3339_ms("2026-12-01T18:00:00+01:00"), Ok(utc));
        assert_eq!(parse_rfc3339_ms("2026-12-01T12:30:00-04:30"), Ok(utc));
        assert_eq!(parse_rfc3339_ms("2026-12-01T17:00:00.250Z"), Ok(utc + 250));
        for bad in [
            "2026-12-01T18:00:00",
            "tomorrow",
            "2026-12-01T18:00:00+1:00",
            "2026-12-01T18:00:00+25:00",
            "2026-13-01T18:00:00Z",
            "",
            "+01:00",
        ] {
            let e = parse_rfc3339_ms(bad).expect_err(bad);
            assert!(e.contains("RFC 3339"), "{e}");
        }
    }
}
