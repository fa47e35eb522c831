//! The config loader (`ecluse check`, reload): whatever the bytes, `check_text` answers
//! without panicking, and every problem it reports carries a position inside the file.
//!
//! Seeds: the policies in `config/*.yaml` and the one in `tests/fuzz_props.rs`.
#![no_main]

use std::path::Path;
use std::sync::Once;

use ecluse::config::check_text;
use ecluse::config::runtime::Retained;
use libfuzzer_sys::fuzz_target;

static ENV: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // The reference policies read their ticket keys from these variables.
    ENV.call_once(|| {
        let keys = "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        std::env::set_var("ECLUSE_TICKET_KEYS", keys);
        std::env::set_var("ECLUSE_FUZZ_KEYS", keys);
    });
    // What load_file does first: bytes that are not a policy's text (not UTF-8, binary,
    // too big) are one diagnostic with a position inside the file.
    let text = match ecluse::config::load::policy_text(data.to_vec()) {
        Ok(t) => t,
        Err(d) => {
            let lines = String::from_utf8_lossy(data).split('\n').count();
            assert!(
                d.pos.line >= 1 && d.pos.col >= 1 && d.pos.line <= lines,
                "a refusal outside the file: {d:?}"
            );
            return;
        }
    };
    let text = text.as_str();
    // A fresh registry per input, as `ecluse check` uses: nothing carries over.
    let registry = Retained::default();
    if let Err(problems) = check_text(text, Path::new("/nonexistent/fuzz.yaml"), &registry, 1) {
        assert!(!problems.is_empty(), "an error without a problem");
        // YAML line breaks: CRLF, LF, and a lone CR too (YAML 1.2 §5.4), as the parser
        // counts them.
        let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count();
        for p in &problems {
            assert!(
                p.pos.line >= 1 && p.pos.col >= 1,
                "a problem without a position: {p:?}"
            );
            assert!(
                p.pos.line <= lines + 1,
                "a problem past the end of the file ({lines} lines): {p:?}"
            );
            let _ = p.render("fuzz.yaml");
        }
    }
});
