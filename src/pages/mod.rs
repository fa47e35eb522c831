//! Responses ecluse writes itself, in French (default) or English by `Accept-Language`,
//! as HTML (works without JavaScript) or JSON when the client asks for JSON.

use bytes::Bytes;

pub mod queue;

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

fn escape(s: &str) -> String {
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

/// The request id, small at the bottom of a page, for a pupil to read out or copy when
/// reporting a problem (ops find the request in the access log and the ENT's logs by it).
fn request_id_line(lang: Lang, request_id: &str) -> String {
    if request_id.is_empty() {
        return String::new();
    }
    let label = match lang {
        Lang::Fr => "Référence à donner si vous signalez un problème :",
        Lang::En => "Reference to give if you report a problem:",
    };
    format!(
        "<p style=\"font-size:.75rem;color:#595959\">{} <code class=\"request-id\">{}</code></p>",
        escape(label),
        escape(request_id)
    )
}

/// What went wrong, in words for students, plus a machine-readable code.
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
    /// No room to buffer the body now (the disk budget is in use).
    NoBodySpace,
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
        }
    }

    fn words(self, lang: Lang) -> (&'static str, &'static str) {
        match (self, lang) {
            (Problem::NoRoute, Lang::Fr) => ("Page introuvable", "Cette adresse ne correspond à aucun service de l'ENT."),
            (Problem::NoRoute, Lang::En) => ("Page not found", "This address does not belong to any service of the ENT."),
            (Problem::OriginBusy, Lang::Fr) => ("L'ENT est très sollicité", "Trop de connexions en même temps : réessayez dans quelques instants. Votre travail n'est pas perdu."),
            (Problem::OriginBusy, Lang::En) => ("The ENT is very busy", "Too many people at once: please try again in a moment. Your work is not lost."),
            (Problem::BadGateway, Lang::Fr) => ("L'ENT ne répond pas correctement", "Le serveur de l'ENT a rencontré un problème. Réessayez dans quelques instants."),
            (Problem::BadGateway, Lang::En) => ("The ENT did not answer properly", "The ENT server ran into a problem. Please try again in a moment."),
            (Problem::GatewayTimeout, Lang::Fr) => ("L'ENT met trop de temps à répondre", "Le serveur de l'ENT est lent en ce moment. Réessayez dans quelques instants."),
            (Problem::GatewayTimeout, Lang::En) => ("The ENT is taking too long", "The ENT server is slow right now. Please try again in a moment."),
            (Problem::BadRequest, Lang::Fr) => ("Requête invalide", "Votre navigateur a envoyé une requête que nous ne comprenons pas."),
            (Problem::BadRequest, Lang::En) => ("Bad request", "Your browser sent a request we could not understand."),
            (Problem::RateLimited, Lang::Fr) => ("Trop de requêtes", "Vous avez envoyé beaucoup de requêtes en peu de temps. Patientez quelques secondes, puis réessayez : votre travail n'est pas perdu."),
            (Problem::RateLimited, Lang::En) => ("Too many requests", "You sent many requests in a short time. Wait a few seconds, then try again: your work is not lost."),
            (Problem::Internal, Lang::Fr) => ("Erreur interne", "Un problème est survenu de notre côté. Réessayez dans quelques instants."),
            (Problem::Internal, Lang::En) => ("Internal error", "Something went wrong on our side. Please try again in a moment."),
            (Problem::PayloadTooLarge, Lang::Fr) => ("Fichier trop volumineux", "Ce que vous envoyez dépasse la taille acceptée ici. Réduisez le fichier (ou découpez-le), puis réessayez."),
            (Problem::PayloadTooLarge, Lang::En) => ("File too large", "What you are sending is larger than this service accepts. Make the file smaller (or split it), then try again."),
            (Problem::LengthRequired, Lang::Fr) => ("Taille manquante", "L'envoi doit annoncer sa taille (Content-Length). Réessayez depuis un navigateur ou l'application de l'ENT."),
            (Problem::LengthRequired, Lang::En) => ("Length required", "The upload must announce its size (Content-Length). Try again from a browser or the ENT app."),
            (Problem::NoBodySpace, Lang::Fr) => ("Envois très nombreux", "Trop d'envois de fichiers en même temps : réessayez dans quelques instants. Votre fichier n'a pas été transmis."),
            (Problem::NoBodySpace, Lang::En) => ("Too many uploads at once", "Too many files are being sent right now: please try again in a moment. Your file was not sent."),
        }
    }
}

/// The 503 page of a feature switched off under load: the ops-written message, and a
/// link home (the rest of the ENT stays up).
pub fn feature_off_page(
    lang: Lang,
    json: bool,
    feature: &str,
    message: &str,
    retry_after: u64,
    request_id: &str,
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
    let (title, home) = match lang {
        Lang::Fr => (
            "Service momentanément suspendu",
            "Retour à l'accueil de l'ENT",
        ),
        Lang::En => ("Service paused for now", "Back to the ENT home page"),
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;line-height:1.5;color:#1b1b1b}}h1{{font-size:1.4rem}}</style>\
</head><body><main><h1>{title}</h1><p>{text}</p><p><a href=\"/\">{home}</a></p>{rid}</main></body></html>\n",
        lang = lang.code(),
        title = escape(title),
        text = escape(message),
        home = escape(home),
        rid = request_id_line(lang, request_id),
    );
    Page {
        content_type: "text/html; charset=utf-8",
        body: Bytes::from(html),
    }
}

/// The page for a problem, HTML or JSON.
pub fn problem_page(
    problem: Problem,
    lang: Lang,
    json: bool,
    retry_after: Option<u64>,
    request_id: &str,
) -> Page {
    let (title, text) = problem.words(lang);
    if json {
        let v = serde_json::json!({
            "error": problem.code(),
            "status": problem.status(),
            "title": title,
            "message": text,
            "retry_after": retry_after,
            "request_id": request_id,
        });
        return Page {
            content_type: "application/json",
            body: Bytes::from(v.to_string()),
        };
    }
    let html = format!(
        "<!doctype html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;line-height:1.5;color:#1b1b1b}}h1{{font-size:1.4rem}}</style>\
</head><body><main><h1>{title}</h1><p>{text}</p>{rid}</main></body></html>\n",
        lang = lang.code(),
        title = escape(title),
        text = escape(text),
        rid = request_id_line(lang, request_id),
    );
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
        let p = problem_page(Problem::OriginBusy, Lang::En, true, Some(2), "rid-1");
        let v: serde_json::Value = serde_json::from_slice(&p.body).expect("json");
        assert_eq!(v["error"], "origin_busy");
        assert_eq!(v["retry_after"], 2);
        assert_eq!(v["request_id"], "rid-1");
    }
}
