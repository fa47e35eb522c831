//! Responses ecluse writes itself, in French (default) or English by `Accept-Language`,
//! as HTML (works without JavaScript) or JSON when the client asks for JSON.

use bytes::Bytes;

pub mod queue;
pub mod render;
pub mod time;

pub use render::{Brand, PageKind, Pages};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Fr,
    En,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::Fr => "fr",
            Lang::En => "en",
        }
    }
}

/// French unless the client prefers English over French (RFC 9110 `Accept-Language` with
/// q-values; unknown languages are ignored, since we only speak these two).
pub fn negotiate_lang(accept_language: Option<&[u8]>) -> Lang {
    let Some(raw) = accept_language.and_then(|v| std::str::from_utf8(v).ok()) else {
        return Lang::Fr;
    };
    let mut best_fr: f32 = -1.0;
    let mut best_en: f32 = -1.0;
    for (pos, item) in raw.split(',').take(32).enumerate() {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q: f32 = 1.0;
        for p in parts {
            if let Some(v) = p.trim().strip_prefix("q=") {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        // Earlier entries win ties, as browsers list by preference.
        let q = q - pos as f32 * 1e-4;
        let primary = tag.split('-').next().unwrap_or("");
        match primary {
            "fr" => best_fr = best_fr.max(q),
            "en" => best_en = best_en.max(q),
            _ => {}
        }
    }
    if best_en > 0.0 && best_en > best_fr {
        Lang::En
    } else {
        Lang::Fr
    }
}

/// Whether the client wants JSON rather than HTML (mobile app, API calls).
pub fn wants_json(accept: Option<&[u8]>) -> bool {
    let Some(a) = accept.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    let json = a.find("application/json");
    let html = a.find("text/html");
    match (json, html) {
        (Some(j), Some(h)) => j < h,
        (Some(_), None) => true,
        _ => false,
    }
}

/// A finished body with its content type.
pub struct Page {
    pub content_type: &'static str,
    pub body: Bytes,
}

/// What went wrong, in words for pupils, plus a machine-readable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// No route matches the request.
    NoRoute,
    /// The origin is at its declared capacity.
    OriginBusy,
    /// The origin could not be reached or answered badly.
    BadGateway,
    /// The origin took too long.
    GatewayTimeout,
    /// The request itself is malformed.
    BadRequest,
    /// A rate limit refused the request.
    RateLimited,
    /// Anything else on our side.
    Internal,
    /// The request body is larger than the route accepts (`max_body_size`).
    PayloadTooLarge,
    /// A body without a length, larger than ecluse can hold back on a buffering route.
    LengthRequired,
    /// No room to buffer the body now (the memory and disk budgets are in use).
    NoBodySpace,
    /// This client's address already holds its share of the body budgets
    /// (`max_per_client`): its other uploads must end first.
    ClientBodyCap,
    /// The request names a port of another server (`Host: ent.fr:1234`): 421 (RFC 9110
    /// §15.5.20), not proxied, so no page the ENT builds from that host is made or stored.
    Misdirected,
}

/// A page's words: what happened, why (and that it is not the pupil's fault), what
/// happens next. `{n}` in `next` is replaced by the `Retry-After` seconds.
#[derive(Debug, Clone, Copy)]
pub struct Words {
    pub title: &'static str,
    pub what: &'static str,
    pub why: &'static str,
    pub next: &'static str,
    /// `next` when there is no `Retry-After` to count down from.
    pub next_plain: &'static str,
}

const fn w(
    title: &'static str,
    what: &'static str,
    why: &'static str,
    next: &'static str,
    next_plain: &'static str,
) -> Words {
    Words {
        title,
        what,
        why,
        next,
        next_plain,
    }
}

impl Problem {
    pub fn status(self) -> u16 {
        match self {
            Problem::NoRoute => 404,
            Problem::OriginBusy => 503,
            Problem::BadGateway => 502,
            Problem::GatewayTimeout => 504,
            Problem::BadRequest => 400,
            Problem::RateLimited => 429,
            Problem::Internal => 500,
            Problem::PayloadTooLarge => 413,
            Problem::LengthRequired => 411,
            Problem::NoBodySpace => 503,
            Problem::ClientBodyCap => 503,
            Problem::Misdirected => 421,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Problem::NoRoute => "no_route",
            Problem::OriginBusy => "origin_busy",
            Problem::BadGateway => "bad_gateway",
            Problem::GatewayTimeout => "gateway_timeout",
            Problem::BadRequest => "bad_request",
            Problem::RateLimited => "rate_limited",
            Problem::Internal => "internal_error",
            Problem::PayloadTooLarge => "payload_too_large",
            Problem::LengthRequired => "length_required",
            Problem::NoBodySpace => "body_storage_full",
            Problem::ClientBodyCap => "client_uploads_full",
            Problem::Misdirected => "misdirected_request",
        }
    }

    /// Which page (and so which template ops may replace) shows this problem.
    pub fn kind(self) -> PageKind {
        match self {
            Problem::RateLimited => PageKind::RateLimited,
            Problem::OriginBusy | Problem::NoBodySpace | Problem::ClientBodyCap => PageKind::Shed,
            Problem::BadGateway | Problem::GatewayTimeout => PageKind::OriginError,
            Problem::BadRequest | Problem::Misdirected => PageKind::BadRequest,
            Problem::NoRoute
            | Problem::Internal
            | Problem::PayloadTooLarge
            | Problem::LengthRequired => PageKind::Error,
        }
    }

    /// Whether the page goes back to the same address by itself after `Retry-After`
    /// (a plain GET: never for what was an upload).
    pub fn auto_retry(self) -> bool {
        matches!(self, Problem::RateLimited | Problem::OriginBusy)
    }

    /// Words for pupils (read by a 12-year-old): what happened, that it is not their
    /// fault, and what happens next. No internal names, no brand in sentences.
    pub fn words(self, lang: Lang) -> Words {
        match (self, lang) {
            (Problem::RateLimited, Lang::Fr) => w(
                "Une petite pause",
                "Beaucoup de demandes sont arrivées de votre appareil en peu de temps, alors le site attend quelques secondes avant de répondre.",
                "Ce n'est pas de votre faute : cela arrive quand beaucoup de personnes partagent la même connexion, au collège par exemple.",
                "La page va se recharger toute seule dans {n}. Votre travail n'est pas perdu.",
                "Attendez quelques secondes, puis réessayez. Votre travail n'est pas perdu.",
            ),
            (Problem::RateLimited, Lang::En) => w(
                "A short pause",
                "Many requests came from your device in a short time, so the site waits a few seconds before answering.",
                "It is not your fault: this happens when many people share the same connection, at school for example.",
                "This page will reload by itself in {n}. Your work is not lost.",
                "Wait a few seconds, then try again. Your work is not lost.",
            ),
            (Problem::OriginBusy, Lang::Fr) => w(
                "Le site est très chargé",
                "Beaucoup de personnes utilisent le site en même temps, et il ne peut pas répondre à tout le monde tout de suite.",
                "Ce n'est pas de votre faute, et votre appareil fonctionne bien.",
                "La page va se recharger toute seule dans {n}. Votre travail n'est pas perdu.",
                "Réessayez dans quelques instants. Votre travail n'est pas perdu.",
            ),
            (Problem::OriginBusy, Lang::En) => w(
                "The site is very busy",
                "Many people are using the site at the same time, and it cannot answer everyone straight away.",
                "It is not your fault, and your device is working fine.",
                "This page will reload by itself in {n}. Your work is not lost.",
                "Try again in a moment. Your work is not lost.",
            ),
            (Problem::NoBodySpace, Lang::Fr) => w(
                "Beaucoup d'envois en même temps",
                "Beaucoup de fichiers sont envoyés en même temps, et le site ne peut pas prendre le vôtre tout de suite.",
                "Ce n'est pas de votre faute, et votre fichier n'a rien.",
                "Votre fichier n'a pas été envoyé : renvoyez-le dans quelques instants.",
                "Votre fichier n'a pas été envoyé : renvoyez-le dans quelques instants.",
            ),
            (Problem::NoBodySpace, Lang::En) => w(
                "Many uploads at once",
                "Many files are being sent at the same time, and the site cannot take yours straight away.",
                "It is not your fault, and nothing is wrong with your file.",
                "Your file was not sent: send it again in a moment.",
                "Your file was not sent: send it again in a moment.",
            ),
            (Problem::ClientBodyCap, Lang::Fr) => w(
                "Des envois sont déjà en cours",
                "Beaucoup de fichiers sont déjà en cours d'envoi depuis votre réseau (votre école, par exemple), alors le site ne peut pas prendre le vôtre tout de suite.",
                "Ce n'est pas de votre faute, et votre fichier n'a rien.",
                "Votre fichier n'a pas été envoyé : renvoyez-le quand les autres envois seront finis.",
                "Votre fichier n'a pas été envoyé : renvoyez-le quand les autres envois seront finis.",
            ),
            (Problem::ClientBodyCap, Lang::En) => w(
                "Uploads already in progress",
                "Many files are already being sent from your network (your school, for example), so the site cannot take yours straight away.",
                "It is not your fault, and nothing is wrong with your file.",
                "Your file was not sent: send it again once the other uploads have finished.",
                "Your file was not sent: send it again once the other uploads have finished.",
            ),
            (Problem::BadGateway, Lang::Fr) => w(
                "Le site a un problème",
                "Le serveur du site n'a pas répondu correctement.",
                "Ce n'est pas de votre faute, et votre appareil fonctionne bien.",
                "Réessayez dans quelques minutes. Si cela dure, prévenez votre professeur.",
                "Réessayez dans quelques minutes. Si cela dure, prévenez votre professeur.",
            ),
            (Problem::BadGateway, Lang::En) => w(
                "The site has a problem",
                "The site's server did not answer properly.",
                "It is not your fault, and your device is working fine.",
                "Try again in a few minutes. If it goes on, tell your teacher.",
                "Try again in a few minutes. If it goes on, tell your teacher.",
            ),
            (Problem::GatewayTimeout, Lang::Fr) => w(
                "Le site met trop de temps à répondre",
                "Le serveur du site est très lent en ce moment.",
                "Ce n'est pas de votre faute, et votre appareil fonctionne bien.",
                "Réessayez dans quelques minutes. Si cela dure, prévenez votre professeur.",
                "Réessayez dans quelques minutes. Si cela dure, prévenez votre professeur.",
            ),
            (Problem::GatewayTimeout, Lang::En) => w(
                "The site is taking too long",
                "The site's server is very slow right now.",
                "It is not your fault, and your device is working fine.",
                "Try again in a few minutes. If it goes on, tell your teacher.",
                "Try again in a few minutes. If it goes on, tell your teacher.",
            ),
            (Problem::BadRequest, Lang::Fr) => w(
                "Cette demande n'a pas pu être lue",
                "Votre navigateur a envoyé une demande que le site ne comprend pas.",
                "Ce n'est pas de votre faute : cela peut venir d'un lien abîmé ou d'un ancien cookie.",
                "Retournez à l'accueil et réessayez. Si cela recommence, fermez le navigateur puis rouvrez-le.",
                "Retournez à l'accueil et réessayez. Si cela recommence, fermez le navigateur puis rouvrez-le.",
            ),
            (Problem::BadRequest, Lang::En) => w(
                "This request could not be read",
                "Your browser sent a request the site does not understand.",
                "It is not your fault: a broken link or an old cookie can cause this.",
                "Go back to the home page and try again. If it happens again, close the browser and open it again.",
                "Go back to the home page and try again. If it happens again, close the browser and open it again.",
            ),
            (Problem::Misdirected, Lang::Fr) => w(
                "Cette adresse n'est pas la bonne",
                "L'adresse demandée contient un numéro de port qui ne mène pas à ce site.",
                "Ce n'est pas de votre faute : le lien que vous avez suivi est sans doute mal écrit.",
                "Tapez l'adresse du site sans numéro de port (sans « :1234 » après le nom), ou passez par le lien de votre établissement.",
                "Tapez l'adresse du site sans numéro de port (sans « :1234 » après le nom), ou passez par le lien de votre établissement.",
            ),
            (Problem::Misdirected, Lang::En) => w(
                "This address is not the right one",
                "The address asked for has a port number that does not lead to this site.",
                "It is not your fault: the link you followed is probably mistyped.",
                "Type the site's address without a port number (no “:1234” after the name), or use your school's link.",
                "Type the site's address without a port number (no “:1234” after the name), or use your school's link.",
            ),
            (Problem::NoRoute, Lang::Fr) => w(
                "Page introuvable",
                "Cette adresse ne mène à aucune page du site.",
                "Le lien est peut-être incomplet ou trop ancien.",
                "Retournez à l'accueil pour retrouver ce que vous cherchez.",
                "Retournez à l'accueil pour retrouver ce que vous cherchez.",
            ),
            (Problem::NoRoute, Lang::En) => w(
                "Page not found",
                "This address does not lead to any page of the site.",
                "The link may be incomplete or too old.",
                "Go back to the home page to find what you are looking for.",
                "Go back to the home page to find what you are looking for.",
            ),
            (Problem::Internal, Lang::Fr) => w(
                "Un problème est survenu",
                "Quelque chose n'a pas marché de notre côté.",
                "Ce n'est pas de votre faute.",
                "Réessayez dans quelques instants.",
                "Réessayez dans quelques instants.",
            ),
            (Problem::Internal, Lang::En) => w(
                "Something went wrong",
                "Something did not work on our side.",
                "It is not your fault.",
                "Try again in a moment.",
                "Try again in a moment.",
            ),
            (Problem::PayloadTooLarge, Lang::Fr) => w(
                "Fichier trop gros",
                "Ce que vous envoyez est plus gros que ce que ce service accepte.",
                "",
                "Réduisez le fichier (ou découpez-le), puis réessayez.",
                "Réduisez le fichier (ou découpez-le), puis réessayez.",
            ),
            (Problem::PayloadTooLarge, Lang::En) => w(
                "File too large",
                "What you are sending is larger than this service accepts.",
                "",
                "Make the file smaller (or split it), then try again.",
                "Make the file smaller (or split it), then try again.",
            ),
            (Problem::LengthRequired, Lang::Fr) => w(
                "Taille manquante",
                "L'envoi doit annoncer sa taille (Content-Length).",
                "",
                "Réessayez depuis un navigateur ou depuis l'application.",
                "Réessayez depuis un navigateur ou depuis l'application.",
            ),
            (Problem::LengthRequired, Lang::En) => w(
                "Length required",
                "The upload must announce its size (Content-Length).",
                "",
                "Try again from a browser or from the app.",
                "Try again from a browser or from the app.",
            ),
        }
    }
}

/// The 503 page of a feature switched off under load: the feature's display name, the
/// ops-written message, and a link home (the rest of the workspace stays up).
/// `feature` (the internal name) appears in JSON only.
#[allow(clippy::too_many_arguments)]
pub fn feature_off_page(
    pages: &Pages,
    lang: Lang,
    json: bool,
    feature: &str,
    display_name: Option<&str>,
    message: &str,
    retry_after: u64,
    request_id: Option<&str>,
) -> Page {
    if json {
        let v = serde_json::json!({
            "error": "feature_off",
            "status": 503,
            "feature": feature,
            "message": message,
            "retry_after": retry_after,
            "request_id": request_id,
        });
        return Page {
            content_type: "application/json",
            body: Bytes::from(v.to_string()),
        };
    }
    let html = pages.render_feature_off(lang, display_name, message, retry_after, request_id);
    Page {
        content_type: "text/html; charset=utf-8",
        body: Bytes::from(html),
    }
}

/// The page for a problem, HTML or JSON.
pub fn problem_page(
    pages: &Pages,
    problem: Problem,
    lang: Lang,
    json: bool,
    retry_after: Option<u64>,
    request_id: Option<&str>,
) -> Page {
    if json {
        let words = problem.words(lang);
        let next = match retry_after {
            Some(n) => words.next.replace("{n}", &render::delay_words(n, lang)),
            None => words.next_plain.to_string(),
        };
        let v = serde_json::json!({
            "error": problem.code(),
            "status": problem.status(),
            "title": words.title,
            "message": format!("{} {next}", words.what),
            "retry_after": retry_after,
            "request_id": request_id,
        });
        return Page {
            content_type: "application/json",
            body: Bytes::from(v.to_string()),
        };
    }
    let html = pages.render_problem(problem, lang, retry_after, request_id);
    Page {
        content_type: "text/html; charset=utf-8",
        body: Bytes::from(html),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language() {
        assert_eq!(negotiate_lang(None), Lang::Fr);
        assert_eq!(negotiate_lang(Some(b"en-GB,en;q=0.9")), Lang::En);
        assert_eq!(negotiate_lang(Some(b"fr-FR,fr;q=0.9,en;q=0.8")), Lang::Fr);
        assert_eq!(negotiate_lang(Some(b"de,en;q=0.5")), Lang::En);
        assert_eq!(negotiate_lang(Some(b"de")), Lang::Fr);
        assert_eq!(negotiate_lang(Some(b"en;q=0.2,fr;q=0.8")), Lang::Fr);
        assert_eq!(negotiate_lang(Some(b"en;q=garbage")), Lang::Fr);
        assert_eq!(negotiate_lang(Some(&[0xff, 0xfe])), Lang::Fr);
    }

    #[test]
    fn json_negotiation() {
        assert!(wants_json(Some(b"application/json")));
        assert!(!wants_json(Some(b"text/html,application/json;q=0.9")));
        assert!(!wants_json(None));
        let p = problem_page(
            &Pages::builtin(),
            Problem::OriginBusy,
            Lang::En,
            true,
            Some(2),
            Some("rid-1"),
        );
        let v: serde_json::Value = serde_json::from_slice(&p.body).expect("json");
        assert_eq!(v["error"], "origin_busy");
        assert_eq!(v["retry_after"], 2);
        assert_eq!(v["request_id"], "rid-1");
    }
}
