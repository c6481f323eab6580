//! The process's open-file limit, and the connections it leaves room for.
//!
//! Owns: raising `RLIMIT_NOFILE`'s soft limit to its hard limit once at start, and the default
//! `max_connections` of a listener derived from it. Must not touch: sockets themselves.
//! Invariant: the default leaves `RESERVED_FILES` descriptors for everything that is not a
//! client connection (journal segments, bridges, replication, the admin port, TLS files), so a
//! broker at its connection limit can still open a segment and accept its peers.

/// Descriptors kept for what is not a client connection.
pub const RESERVED_FILES: u64 = 1024;

/// The fewest connections a listener admits by default, however low the limit.
const MIN_DEFAULT_CONNECTIONS: u64 = 64;

/// Raises the soft open-file limit to the hard limit (as servers do: the soft limit of a login
/// shell is often 1,024) and returns the limit now in force.
pub fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return open_file_limit();
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                tracing::warn!(
                    soft = lim.rlim_cur,
                    hard = lim.rlim_max,
                    "could not raise the open-file limit to its hard limit"
                );
            }
        }
    }
    open_file_limit()
}

/// The soft open-file limit in force (`u64::MAX` when unlimited or unknown).
pub fn open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return u64::MAX;
    }
    lim.rlim_cur
}

/// A listener's `max_connections` when the topology sets none: what `open_files` leaves after
/// the reserve (at least 64, and at most `u32::MAX`).
pub fn default_max_connections(open_files: u64) -> u32 {
    open_files
        .saturating_sub(RESERVED_FILES)
        .max(MIN_DEFAULT_CONNECTIONS)
        .min(u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leaves_the_reserve_and_has_a_floor() {
        assert_eq!(default_max_connections(20_000), 18_976);
        assert_eq!(default_max_connections(1_024), 64);
        assert_eq!(default_max_connections(u64::MAX), u32::MAX);
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let before = open_file_limit();
        assert!(raise_open_file_limit() >= before);
    }
}
