//! `degradation`: levels, their thresholds, messages and the features each one turns off.

use std::collections::HashMap;
use std::time::Duration;

use super::context::{duration_or, valid_name, Problems};
use crate::clock::parse_rfc3339_ms;
use crate::config::file::{FileConfig, ForceFeatureFile, ForceLevelFile};
use crate::config::tree::Seg;
use crate::config::units::parse_duration;
use crate::path;

fn thresholds(
    p: &mut Problems,
    t: &super::file::ThresholdsFile,
    at: Vec<Seg>,
) -> crate::policy::degrade::Thresholds {
    let ratio = |p: &mut Problems, v: Option<f64>, key: &str| {
        if let Some(x) = v {
            if !(0.0..=10.0).contains(&x) {
                let mut a = at.clone();
                a.push(Seg::from(key));
                p.at(a, format!("{x} is out of range: a ratio between 0 and 1"));
            }
        }
        v
    };
    crate::policy::degrade::Thresholds {
        inflight_ratio: ratio(p, t.inflight_ratio, "inflight_ratio"),
        error_rate: ratio(p, t.error_rate, "error_rate"),
        p95_ms: t.p95_latency.as_ref().map(|d| {
            let mut a = at.clone();
            a.push(Seg::from("p95_latency"));
            duration_or(p, &Some(d.clone()), Duration::from_secs(1), a).as_secs_f64() * 1000.0
        }),
        queue_depth: t.queue_depth.map(|q| q as f64),
    }
}

pub(super) fn build_degradation(
    p: &mut Problems,
    file: &FileConfig,
) -> Option<crate::policy::degrade::Degradation> {
    let route_features: Vec<&String> = file
        .routes
        .iter()
        .filter_map(|r| r.feature.as_ref())
        .collect();
    for (i, r) in file.routes.iter().enumerate() {
        if let Some(f) = &r.feature {
            if !valid_name(f) {
                p.at(
                    path!["routes", i, "feature"],
                    format!("`{f}`: feature names use letters, digits, `_` and `-`"),
                );
            }
        }
    }
    let d = file.degradation.as_ref()?;
    let mut levels = Vec::new();
    if d.levels.is_empty() {
        p.at(
            path!["degradation", "levels"],
            "needs at least the normal level, e.g. `- { name: normal }`",
        );
    }
    let mut features: Vec<String> = route_features.iter().map(|s| s.to_string()).collect();
    for (i, l) in d.levels.iter().enumerate() {
        let at = |extra: Vec<Seg>| {
            let mut v = path!["degradation", "levels", i];
            v.extend(extra);
            v
        };
        if d.levels[..i].iter().any(|o| o.name == l.name) {
            p.at(
                at(path!["name"]),
                format!("level `{}` is declared twice", l.name),
            );
        }
        for (k, f) in l.disable.iter().enumerate() {
            if !route_features.contains(&f) {
                let hint = crate::config::schema_check::did_you_mean(
                    f,
                    route_features.iter().map(|s| s.as_str()),
                )
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
                p.at(
                    at(path!["disable", k]),
                    format!("feature `{f}` is carried by no route{hint}"),
                );
            }
            if !features.contains(f) {
                features.push(f.clone());
            }
        }
        if i == 0 && l.enter.is_some() {
            p.at(
                at(path!["enter"]),
                "the first level is the normal state: it has no enter thresholds",
            );
        }
        let enter = l
            .enter
            .as_ref()
            .map(|t| thresholds(p, t, at(path!["enter"])))
            .unwrap_or_default();
        let exit = l
            .exit
            .as_ref()
            .map(|t| thresholds(p, t, at(path!["exit"])))
            .unwrap_or(enter);
        if i > 0 && enter.is_empty() {
            // A level without enter thresholds can only be forced: allowed, and said.
            log::debug!(
                "level {} has no enter thresholds: it is reached only when forced",
                l.name
            );
        }
        let factor = |p: &mut Problems, v: Option<f64>, key: &str| match v {
            None => 1.0,
            Some(x) if x > 0.0 && x <= 1.0 => x,
            Some(x) => {
                p.at(
                    at(path![key]),
                    format!("{x} must be more than 0 and at most 1"),
                );
                1.0
            }
        };
        levels.push(crate::policy::degrade::Level {
            name: l.name.clone(),
            disable: l.disable.clone(),
            room_factor: factor(p, l.room_capacity_factor, "room_capacity_factor"),
            rate_factor: factor(p, l.rate_limit_factor, "rate_limit_factor"),
            serve_stale: l.serve_stale.unwrap_or(false),
            hold: l.hold.as_ref().map(|h| {
                duration_or(
                    p,
                    &Some(h.clone()),
                    Duration::from_secs(30),
                    at(path!["hold"]),
                )
            }),
            enter,
            exit,
        });
    }
    let until = |p: &mut Problems, t: &Option<String>, at: Vec<Seg>| -> Option<u64> {
        let t = t.as_ref()?;
        match parse_rfc3339_ms(t) {
            Ok(ms) => Some(ms),
            Err(e) => {
                p.at(at, e);
                None
            }
        }
    };
    let force_level = d.force_level.as_ref().and_then(|f| {
        let (name, at, until_ms) = match f {
            ForceLevelFile::Name(n) => (n, path!["degradation", "force_level"], None),
            ForceLevelFile::Until(t) => (
                &t.level,
                path!["degradation", "force_level", "level"],
                until(p, &t.until, path!["degradation", "force_level", "until"]),
            ),
        };
        match levels.iter().position(|l| &l.name == name) {
            Some(i) => Some((i, until_ms)),
            None => {
                let hint = crate::config::schema_check::did_you_mean(
                    name,
                    levels.iter().map(|l| l.name.as_str()),
                )
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
                p.at(
                    at,
                    format!("level `{name}` is not declared under `levels`{hint}"),
                );
                None
            }
        }
    });
    let mut force_features = Vec::new();
    for (f, ff) in &d.force_features {
        let at = path!["degradation", "force_features", f.as_str()];
        let (on, until_ms) = match ff {
            ForceFeatureFile::On(on) => (*on, None),
            ForceFeatureFile::Until(t) => (
                t.on,
                until(p, &t.until, {
                    let mut a = at.clone();
                    a.push(Seg::from("until"));
                    a
                }),
            ),
        };
        if !features.contains(f) {
            let hint =
                crate::config::schema_check::did_you_mean(f, features.iter().map(|s| s.as_str()))
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
            p.at_key(at, format!("feature `{f}` is carried by no route{hint}"));
            continue;
        }
        force_features.push((f.clone(), on, until_ms));
    }
    let mut messages = HashMap::new();
    for (f, m) in &d.features {
        if !features.contains(f) {
            p.at_key(
                path!["degradation", "features", f.as_str()],
                format!("feature `{f}` is carried by no route"),
            );
        }
        messages.insert(
            f.clone(),
            crate::policy::degrade::FeatureMessage {
                name_fr: m.name_fr.clone(),
                name_en: m.name_en.clone(),
                fr: m.message_fr.clone().unwrap_or_else(|| {
                    crate::policy::degrade::default_message(m.name_fr.as_deref(), true)
                }),
                en: m.message_en.clone().unwrap_or_else(|| {
                    crate::policy::degrade::default_message(m.name_en.as_deref(), false)
                }),
                retry_after: duration_or(
                    p,
                    &m.retry_after,
                    Duration::from_secs(300),
                    path!["degradation", "features", f.as_str(), "retry_after"],
                ),
                drain: match &m.drain {
                    None => crate::policy::degrade::DEFAULT_DRAIN,
                    Some(t) if t.0.trim() == "never" => None,
                    Some(t) => match parse_duration(&t.0) {
                        Ok(d) => Some(d),
                        Err(e) => {
                            p.at(
                                path!["degradation", "features", f.as_str(), "drain"],
                                format!("{e}, or `never`"),
                            );
                            crate::policy::degrade::DEFAULT_DRAIN
                        }
                    },
                },
            },
        );
    }
    Some(crate::policy::degrade::Degradation {
        levels,
        hold: duration_or(
            p,
            &d.hold,
            Duration::from_secs(30),
            path!["degradation", "hold"],
        ),
        force_level,
        force_features,
        messages,
        features,
    })
}
