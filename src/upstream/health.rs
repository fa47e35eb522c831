//! Active health checks (filled in below).
