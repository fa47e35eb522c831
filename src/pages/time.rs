//! Times as pupils read them: in the school's time zone (`pages.time_zone`, default
//! `Europe/Paris`), through jiff and its time-zone database rather than hand-written
//! offsets (summer time changes on a date set by law, and the database knows it).
//!
//! JSON answers carry RFC 3339 with the zone's offset (`2026-12-07T17:00:00+01:00`);
//! pages carry words ("lundi 16 mars à 08:00", "Monday 16 March at 08:00").

use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};

use super::Lang;

/// The zone used when the file names none.
pub const DEFAULT_TIME_ZONE: &str = "Europe/Paris";

/// A named time zone, resolved once at config load.
#[derive(Clone)]
pub struct Zone {
    pub name: String,
    tz: TimeZone,
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Zone({})", self.name)
    }
}

impl Zone {
    /// An IANA name (`Europe/Paris`, `America/Cayenne`, `Indian/Reunion`, `UTC`).
    pub fn named(name: &str) -> Result<Zone, String> {
        let tz = TimeZone::get(name).map_err(|e| {
            format!("unknown time zone `{name}` ({e}); use an IANA name like `Europe/Paris`")
        })?;
        Ok(Zone {
            name: name.to_string(),
            tz,
        })
    }

    /// The default, `Europe/Paris` (bundled in the binary, so it always resolves).
    pub fn default_zone() -> Zone {
        Zone::named(DEFAULT_TIME_ZONE).unwrap_or_else(|_| Zone {
            name: "UTC".into(),
            tz: TimeZone::UTC,
        })
    }

    fn at(&self, unix_ms: u64) -> ZonedDateTime {
        // Whole seconds: pages and JSON never show fractions. Out-of-range values
        // (beyond year 9999) clamp to the epoch rather than fail a page.
        let secs = i64::try_from(unix_ms / 1000).unwrap_or(0);
        Timestamp::from_second(secs)
            .unwrap_or(Timestamp::UNIX_EPOCH)
            .to_zoned_datetime(self.tz.clone())
    }

    /// `15:27:19`, local time.
    pub fn clock(&self, unix_ms: u64) -> String {
        let z = self.at(unix_ms);
        format!("{:02}:{:02}:{:02}", z.hour(), z.minute(), z.second())
    }

    /// RFC 3339 with the zone's offset at that instant, `2026-12-07T17:00:00+01:00`.
    pub fn rfc3339(&self, unix_ms: u64) -> String {
        let z = self.at(unix_ms);
        z.timestamp().display_with_offset(z.offset()).to_string()
    }

    /// When something happens, seen from `now_ms`: "aujourd'hui à 08:00" the same local
    /// day, "demain à 08:00" the next, else "lundi 16 mars à 08:00" (with the year when
    /// it is not this year's).
    pub fn when(&self, unix_ms: u64, now_ms: u64, lang: Lang) -> String {
        let z = self.at(unix_ms);
        let now = self.at(now_ms);
        let hm = format!("{:02}:{:02}", z.hour(), z.minute());
        let day = z.date();
        if day == now.date() {
            return match lang {
                Lang::Fr => format!("aujourd'hui à {hm}"),
                Lang::En => format!("today at {hm}"),
            };
        }
        if now.date().tomorrow().ok() == Some(day) {
            return match lang {
                Lang::Fr => format!("demain à {hm}"),
                Lang::En => format!("tomorrow at {hm}"),
            };
        }
        let wd = z.weekday().to_monday_zero_offset() as usize;
        let m = (z.month() as usize).clamp(1, 12) - 1;
        let year = if z.year() != now.year() {
            format!(" {}", z.year())
        } else {
            String::new()
        };
        match lang {
            Lang::Fr => {
                const DAYS: [&str; 7] = [
                    "lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche",
                ];
                const MONTHS: [&str; 12] = [
                    "janvier",
                    "février",
                    "mars",
                    "avril",
                    "mai",
                    "juin",
                    "juillet",
                    "août",
                    "septembre",
                    "octobre",
                    "novembre",
                    "décembre",
                ];
                // French writes the first of the month "1er".
                let d = if z.day() == 1 {
                    "1er".to_string()
                } else {
                    z.day().to_string()
                };
                format!("{} {d} {}{year} à {hm}", DAYS[wd % 7], MONTHS[m])
            }
            Lang::En => {
                const DAYS: [&str; 7] = [
                    "Monday",
                    "Tuesday",
                    "Wednesday",
                    "Thursday",
                    "Friday",
                    "Saturday",
                    "Sunday",
                ];
                const MONTHS: [&str; 12] = [
                    "January",
                    "February",
                    "March",
                    "April",
                    "May",
                    "June",
                    "July",
                    "August",
                    "September",
                    "October",
                    "November",
                    "December",
                ];
                format!("{} {} {}{year} at {hm}", DAYS[wd % 7], z.day(), MONTHS[m])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc: &str) -> u64 {
        let t: Timestamp = rfc.parse().expect("timestamp");
        t.as_millisecond() as u64
    }

    #[test]
    fn paris_local_time_with_summer_time() {
        let z = Zone::named("Europe/Paris").expect("zone");
        // Winter: UTC+1.
        assert_eq!(z.clock(ms("2026-12-07T14:27:19Z")), "15:27:19");
        assert_eq!(
            z.rfc3339(ms("2026-12-07T16:00:00Z")),
            "2026-12-07T17:00:00+01:00"
        );
        // Summer: UTC+2.
        assert_eq!(z.clock(ms("2026-06-15T06:00:00Z")), "08:00:00");
        assert_eq!(
            z.rfc3339(ms("2026-06-15T06:00:00Z")),
            "2026-06-15T08:00:00+02:00"
        );
    }

    #[test]
    fn dates_when_not_today() {
        let z = Zone::named("Europe/Paris").expect("zone");
        let now = ms("2026-03-12T10:00:00Z");
        let at = ms("2026-03-16T07:00:00Z");
        assert_eq!(z.when(at, now, Lang::Fr), "lundi 16 mars à 08:00");
        assert_eq!(z.when(at, now, Lang::En), "Monday 16 March at 08:00");
        assert_eq!(
            z.when(ms("2026-03-12T16:00:00Z"), now, Lang::Fr),
            "aujourd'hui à 17:00"
        );
        assert_eq!(
            z.when(ms("2026-03-13T07:00:00Z"), now, Lang::En),
            "tomorrow at 08:00"
        );
        // Same UTC day, next local day: 23:30 UTC is 00:30 in Paris.
        assert_eq!(
            z.when(ms("2026-03-12T23:30:00Z"), now, Lang::Fr),
            "demain à 00:30"
        );
        assert_eq!(
            z.when(ms("2027-04-01T06:00:00Z"), now, Lang::Fr),
            "jeudi 1er avril 2027 à 08:00"
        );
    }

    #[test]
    fn other_zones_and_bad_names() {
        let z = Zone::named("America/Cayenne").expect("zone");
        assert_eq!(z.clock(ms("2026-12-07T14:27:19Z")), "11:27:19");
        assert!(Zone::named("Europe/Pariss").is_err());
        assert!(Zone::named("../../etc/passwd").is_err());
        assert!(Zone::named("").is_err());
        assert_eq!(Zone::default_zone().name, "Europe/Paris");
    }
}
