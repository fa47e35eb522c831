//! `cluster`: fleet mode over Redis, and the default node id.

use std::time::Duration;

use super::context::{duration_or, valid_name, Problems};
use crate::config::file::FileConfig;
use crate::config::tree::Seg;
use crate::path;

/// The default `node_id`: the host name and a short hash of the policy file's absolute
/// path. Stable across restarts (it is a metric label: a pid would add series at every
/// restart), and two instances on one host with their own policy files differ.
fn default_node_id(policy_path: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && valid_name(&h.replace('.', "_")))
        .unwrap_or_else(|| "node".to_string());
    let abs = std::fs::canonicalize(policy_path).unwrap_or_else(|_| policy_path.to_path_buf());
    let digest = <sha2::Sha256 as sha2::Digest>::digest(abs.as_os_str().as_encoded_bytes());
    format!("{host}-{}", hex::encode(&digest[..3]))
}

pub(super) fn build_cluster(
    p: &mut Problems,
    file: &FileConfig,
    policy_path: &std::path::Path,
    base_dir: &std::path::Path,
) -> Option<crate::config::fleet::ClusterSettings> {
    use super::file::FailModeFile;
    let c = file.cluster.as_ref()?;
    // A Redis URL the client accepts, TLS included; never the crate's `#insecure` (no
    // certificate check), which it is built without anyway: refused here, clearly.
    let check_url = |p: &mut Problems, url: &str, at: Vec<Seg>, example: &str| {
        if url.contains('#') {
            p.at(
                at,
                format!("`{url}`: no `#…` fragment (`#insecure` would skip the certificate check, which ecluse never does): use `tls_ca_file` for a private authority"),
            );
        } else if let Err(e) = redis::Client::open(url) {
            p.at(
                at,
                format!("`{url}` is not a Redis URL ({e}): write it like `{example}`"),
            );
        }
    };
    if let Some(url) = &c.redis {
        check_url(
            p,
            url,
            path!["cluster", "redis"],
            "redis://10.0.0.9:6379/ (or rediss://… for TLS)",
        );
    }
    match (&c.redis, &c.sentinel) {
        (Some(_), None) => {}
        (None, None) => p.at(
            path!["cluster"],
            "needs `redis` (one Redis or a Cluster node) or `sentinel` (Sentinels and a master name)",
        ),
        (Some(_), Some(_)) => p.at(
            path!["cluster", "sentinel"],
            "give `redis` or `sentinel`, not both: with Sentinel the master's address comes from the Sentinels",
        ),
        (None, Some(_)) => {}
    }
    let sentinel = c.sentinel.as_ref().map(|sf| {
        if sf.addresses.is_empty() {
            p.at(
                path!["cluster", "sentinel", "addresses"],
                "list the Sentinels, like `[\"redis://10.0.0.1:26379/\", \"redis://10.0.0.2:26379/\", \"redis://10.0.0.3:26379/\"]`",
            );
        }
        for (i, a) in sf.addresses.iter().enumerate() {
            check_url(
                p,
                a,
                path!["cluster", "sentinel", "addresses", i],
                "redis://10.0.0.1:26379/",
            );
        }
        let tls = |a: &String| a.starts_with("rediss://");
        if sf.addresses.iter().any(tls) && !sf.addresses.iter().all(tls) {
            p.at(
                path!["cluster", "sentinel", "addresses"],
                "the Sentinels speak TLS or they do not: write every address `rediss://…`, or none",
            );
        }
        if sf.master_name.is_empty()
            || sf.master_name.len() > 128
            || !sf.master_name.bytes().all(|b| b.is_ascii_graphic())
        {
            p.at(
                path!["cluster", "sentinel", "master_name"],
                format!(
                    "`{}`: the name the Sentinels monitor (`sentinel monitor NAME …`), one word",
                    sf.master_name
                ),
            );
        }
        if c.redis_cluster {
            p.at(
                path!["cluster", "redis_cluster"],
                "a Redis Cluster fails over by itself: `redis_cluster` and `sentinel` do not go together",
            );
        }
        let password = sf.password_env.as_ref().and_then(|var| match std::env::var(var) {
            Ok(v) => Some(v),
            Err(_) => {
                let _ = p.missing_secret(
                    path!["cluster", "sentinel", "password_env"],
                    format!("environment variable `{var}` is not set"),
                );
                None
            }
        });
        crate::config::fleet::SentinelSettings {
            addresses: sf.addresses.clone(),
            master_name: sf.master_name.clone(),
            username: sf.username.clone(),
            password: password.map(crate::config::fleet::Redacted),
            tls: sf.tls,
            db: sf.db.unwrap_or(0),
        }
    });
    let tls_ca = c.tls_ca_file.as_ref().and_then(|f| {
        let full = base_dir.join(f);
        match std::fs::read(&full) {
            Ok(pem) => {
                let certs: Vec<_> = <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(&pem)
                    .filter_map(Result::ok)
                    .collect();
                if certs.is_empty() {
                    p.at(
                        path!["cluster", "tls_ca_file"],
                        format!("`{}` holds no PEM certificate", full.display()),
                    );
                    None
                } else {
                    Some(pem)
                }
            }
            Err(e) => {
                p.at(
                    path!["cluster", "tls_ca_file"],
                    format!("cannot read `{}`: {e}", full.display()),
                );
                None
            }
        }
    });
    let prefix = c.key_prefix.clone().unwrap_or_else(|| "ecluse".to_string());
    if prefix.is_empty()
        || prefix.len() > 64
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'))
    {
        p.at(
            path!["cluster", "key_prefix"],
            format!("`{prefix}`: use letters, digits, `_`, `-`, `:` and `.` (no braces: ecluse adds the hash tag)"),
        );
    }
    let node_id = c
        .node_id
        .clone()
        .unwrap_or_else(|| default_node_id(policy_path));
    if !valid_name(&node_id.replace('.', "_")) {
        p.at(
            path!["cluster", "node_id"],
            format!(
                "`{node_id}`: use letters, digits, `_`, `-` and `.` (it becomes a metric label)"
            ),
        );
    }
    let sync_interval = duration_or(
        p,
        &c.sync_interval,
        Duration::from_millis(250),
        path!["cluster", "sync_interval"],
    );
    if sync_interval < Duration::from_millis(50) || sync_interval > Duration::from_secs(10) {
        p.at(
            path!["cluster", "sync_interval"],
            "must be between 50ms and 10s",
        );
    }
    Some(crate::config::fleet::ClusterSettings {
        redis_url: c.redis.clone().unwrap_or_default(),
        redis_cluster: c.redis_cluster,
        sentinel,
        tls_ca,
        prefix,
        node_id,
        timeout: duration_or(
            p,
            &c.timeout,
            Duration::from_millis(200),
            path!["cluster", "timeout"],
        ),
        sync_interval,
        fail_mode: match c.fail_mode {
            None | Some(FailModeFile::LocalShare) => crate::config::fleet::FailMode::LocalShare,
            Some(FailModeFile::LocalFull) => crate::config::fleet::FailMode::LocalFull,
        },
        expected_nodes: match c.expected_nodes {
            None => 1,
            Some(n @ 1..=1000) => n,
            Some(_) => {
                p.at(
                    path!["cluster", "expected_nodes"],
                    "must be between 1 and 1000",
                );
                1
            }
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_node_id_is_stable_across_restarts() {
        let p = std::path::Path::new("/etc/ecluse/ecluse.yaml");
        let a = super::default_node_id(p);
        assert_eq!(
            a,
            super::default_node_id(p),
            "same host, same policy: same id"
        );
        assert!(
            !a.ends_with(&format!("-{}", std::process::id())),
            "no pid in {a}"
        );
        assert_ne!(
            a,
            super::default_node_id(std::path::Path::new("/etc/ecluse/other.yaml")),
            "two instances with their own policies on one host differ"
        );
        assert!(
            super::valid_name(&a.replace('.', "_")),
            "{a} is a valid label"
        );
    }
}
