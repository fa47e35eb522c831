//! The path normalizer (`ecluse::policy::path`): on any request-target bytes and under
//! every policy, it never panics, its output is ASCII, starts with `/` (or is `*`), holds
//! no dot segment, no control byte and (with `merge_slashes`) no `//`, and normalizing
//! its output again changes nothing (idempotence). The policy path every decision
//! compares (`policy_path`: case folded, Windows names, front controllers) never panics,
//! stays ASCII under `/`, is its own policy path, and under `case_insensitive` the
//! canonical path is already case-folded.
#![no_main]

use ecluse::policy::path::{canonical_target, fold_case, policy_path, PathPolicy, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for p in PathPolicy::all() {
        let Ok(t) = canonical_target(data, &p) else {
            continue;
        };
        let Target::Path { path_and_query, .. } = t else {
            continue;
        };
        let pq = path_and_query.into_owned();
        let path = pq.split(|&b| b == b'?').next().unwrap_or_default();
        assert!(path.is_ascii(), "{pq:?}");
        assert!(path.starts_with(b"/"), "{pq:?}");
        assert!(
            !path.iter().any(|&b| b < 0x20 || b == 0x7F || b == b'\\'),
            "{pq:?}"
        );
        assert!(
            !path.split(|&b| b == b'/').any(|s| s == b"." || s == b".."),
            "{pq:?}"
        );
        if p.merge_slashes {
            assert!(!path.windows(2).any(|w| w == b"//"), "{pq:?}");
        }
        let again = match canonical_target(&pq, &p) {
            Ok(Target::Path { path_and_query, .. }) => path_and_query.into_owned(),
            other => panic!("{pq:?} → {other:?}"),
        };
        assert_eq!(again, pq, "not idempotent under {p:?}");
        if p.case_insensitive {
            assert_eq!(&*fold_case(path), path, "not folded under {p:?}");
        }
        let fcs = ["/index.php".to_string()];
        if let Ok(k) = policy_path(path, &fcs) {
            assert!(k.is_ascii() && k.starts_with(b"/"), "{k:?}");
            let again = policy_path(&k, &fcs).expect("a policy path is one");
            assert_eq!(again, k, "policy_path not idempotent");
        }
    }
});
