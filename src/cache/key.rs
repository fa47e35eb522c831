//! The cache key's URL form (`primary_key`), shared by the proxy's keys, purges and
//! tombstones, and foyer's key of a pingora key.

use pingora_cache::key::CacheHashKey;

/// The URL form used as pingora CacheKey primary and for purges: "scheme://host/path?query"
/// (query omitted when empty). The proxy builds keys with CacheKey::new(primary_key(..), "").
///
/// Scheme and host are lowercased (they are case-insensitive in HTTP), the path and query
/// are kept as given; a path that does not start with `/` gets one.
pub fn primary_key(scheme: &str, host: &str, path_and_query: &str) -> String {
    let pq = path_and_query.strip_suffix('?').unwrap_or(path_and_query);
    let mut s = String::with_capacity(scheme.len() + 3 + host.len() + pq.len() + 1);
    s.extend(scheme.chars().map(|c| c.to_ascii_lowercase()));
    s.push_str("://");
    s.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    if !pq.starts_with('/') {
        s.push('/');
    }
    s.push_str(pq);
    s
}

/// The path and query as [`primary_key`] writes them, for tombstones and index matching.
pub(super) fn normalize_path(path_and_query: &str) -> String {
    let pq = path_and_query.strip_suffix('?').unwrap_or(path_and_query);
    if pq.starts_with('/') {
        pq.to_string()
    } else {
        format!("/{pq}")
    }
}

/// Split a [`primary_key`] URL into ("host/path?query", "host", "/path?query") without
/// allocating (the tombstone check runs on every hit while tombstones exist).
pub(super) fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let start = url.find("://")? + 3;
    let rest = url.get(start..)?;
    let slash = rest.find('/').unwrap_or(rest.len());
    Some((rest, &rest[..slash], &rest[slash..]))
}

/// The host of a key without its port (`ent.fr:8443` → `ent.fr`, `[::1]:8443` → `[::1]`):
/// what purges name, so a purge by host covers every port.
pub(super) fn host_name(host: &str) -> &str {
    crate::policy::route::host_without_port(host)
}

/// foyer key of a pingora key.
pub(super) fn hash_key<K: CacheHashKey>(key: &K) -> u128 {
    u128::from_be_bytes(key.combined_bin())
}
