//! `pages`: templates, branding and the time zone of the pages ecluse writes itself.

use super::context::{BuildContext, Problems};
use crate::config::file::FileConfig;
use crate::path;

/// `pages`: time zone, branding, template files. Each template file is read, compiled
/// and rendered with sample values; a problem is reported at the file's key. On any
/// problem the built-in pages stand in (the config is refused anyway).
pub(super) fn build_pages(
    p: &mut Problems,
    file: &FileConfig,
    ctx: &BuildContext,
) -> crate::pages::Pages {
    use crate::pages::render::{check_accent, check_url};
    use crate::pages::{time::Zone, Brand, PageKind, Pages};
    let f = file.pages.clone().unwrap_or_default();
    let zone = match f.time_zone.as_deref() {
        None => Zone::default_zone(),
        Some(name) => match Zone::named(name.trim()) {
            Ok(z) => z,
            Err(e) => {
                p.at(path!["pages", "time_zone"], e);
                Zone::default_zone()
            }
        },
    };
    let mut brand = Brand::default();
    if let Some(b) = &f.brand {
        if let Some(n) = &b.name {
            if n.trim().is_empty() || n.chars().count() > 80 {
                p.at(
                    path!["pages", "brand", "name"],
                    "a name of 1 to 80 characters",
                );
            } else {
                brand.name = n.trim().to_string();
            }
        }
        for (key, value, slot) in [
            ("logo_url", &b.logo_url, &mut brand.logo_url),
            ("help_url", &b.help_url, &mut brand.help_url),
        ] {
            if let Some(v) = value {
                match check_url(v.trim()) {
                    Ok(u) => *slot = Some(u),
                    Err(e) => p.at(path!["pages", "brand", key], e),
                }
            }
        }
        for (key, value, dark) in [
            ("accent", &b.accent, false),
            ("accent_dark", &b.accent_dark, true),
        ] {
            if let Some(v) = value {
                match check_accent(v, dark) {
                    Ok(c) if dark => brand.accent_dark = c,
                    Ok(c) => brand.accent = c,
                    Err(e) => p.at(path!["pages", "brand", key], e),
                }
            }
        }
    }
    let mut overrides = Vec::new();
    let mut files = Vec::new();
    for (name, rel) in f
        .templates
        .as_ref()
        .map(|t| t.entries())
        .unwrap_or_default()
    {
        let full = ctx.base_dir.join(rel);
        match (PageKind::from_name(name), std::fs::read_to_string(&full)) {
            (Some(kind), Ok(src)) => {
                overrides.push((kind, src));
                files.push((name, full));
            }
            (_, Err(e)) => p.at(
                path!["pages", "templates", name],
                format!("cannot read `{}`: {e}", full.display()),
            ),
            (None, Ok(_)) => {}
        }
    }
    match Pages::build(&overrides, brand.clone(), zone.clone()) {
        Ok(pages) => pages,
        Err(e) => {
            // Blame the file of the page that failed, or the layout (every page
            // extends it) when the page itself is built in.
            let (key, shown) = match files.iter().find(|(n, _)| *n == e.kind) {
                Some((n, full)) => (*n, full.display().to_string()),
                None => match files.iter().find(|(n, _)| *n == "layout") {
                    Some((n, full)) => (*n, full.display().to_string()),
                    None => (e.kind, String::from("built-in")),
                },
            };
            p.at(
                path!["pages", "templates", key],
                format!("template `{shown}` (page `{}`): {}", e.kind, e.message),
            );
            Pages::build(&[], brand, zone).unwrap_or_else(|_| (*Pages::builtin()).clone())
        }
    }
}
