//! What CONNECT settles: the protocol version and the heart-beat intervals.

use super::{quote, StompError, Version};

/// The version to speak, from a CONNECT/STOMP frame's `accept-version` header: the highest one
/// both sides know. No header means a 1.0 client; `None` means nothing in common (answer with
/// an ERROR naming the versions this server supports).
pub fn negotiate(accept_version: Option<&str>) -> Option<Version> {
    let Some(offered) = accept_version else {
        return Some(Version::V1_0);
    };
    offered
        .split(',')
        .map(str::trim)
        .filter_map(|v| Version::ALL.into_iter().find(|known| known.as_str() == v))
        .max()
}

/// Parses a `heart-beat` header, `cx,cy` in milliseconds.
pub fn parse_heartbeat(value: &str) -> Result<(u64, u64), StompError> {
    let bad = || StompError::BadHeartbeat(quote(value.as_bytes()));
    let (a, b) = value.split_once(',').ok_or_else(bad)?;
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
    Ok((number(a)?, number(b)?))
}

/// The heart-beat intervals both sides must keep, from the server's point of view.
///
/// `client` is the CONNECT's `heart-beat` (cx: the client can send every cx ms; cy: it wants
/// to receive every cy ms), `server` the CONNECTED's (sx, sy likewise). Per the spec the
/// server sends every max(sx, cy) ms unless either is 0, and expects the client's every
/// max(cx, sy) ms unless either is 0. Answers `(send_every_ms, expect_every_ms)`, 0 = none.
pub fn negotiate_heartbeat(client: (u64, u64), server: (u64, u64)) -> (u64, u64) {
    let (cx, cy) = client;
    let (sx, sy) = server;
    let every = |a: u64, b: u64| if a == 0 || b == 0 { 0 } else { a.max(b) };
    (every(sx, cy), every(cx, sy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_the_highest_in_common() {
        assert_eq!(negotiate(None), Some(Version::V1_0));
        assert_eq!(negotiate(Some("1.0")), Some(Version::V1_0));
        assert_eq!(negotiate(Some("1.1")), Some(Version::V1_1));
        assert_eq!(negotiate(Some("1.0,1.1,1.2")), Some(Version::V1_2));
        assert_eq!(negotiate(Some("1.2,1.0")), Some(Version::V1_2));
        assert_eq!(negotiate(Some("1.1, 2.0")), Some(Version::V1_1));
        assert_eq!(negotiate(Some("2.0,3.0")), None);
        assert_eq!(negotiate(Some("")), None);
    }

    #[test]
    fn heartbeat_header_parses_or_names_the_format() {
        assert_eq!(parse_heartbeat("0,0"), Ok((0, 0)));
        assert_eq!(parse_heartbeat("10000, 5000"), Ok((10000, 5000)));
        for bad in ["", "10", "a,b", "-1,0", "1,2,3"] {
            let err = parse_heartbeat(bad).unwrap_err();
            assert!(err.to_string().contains("e.g. 10000,10000"), "{bad}: {err}");
        }
    }

    #[test]
    fn heartbeat_intervals_follow_the_spec() {
        // Nobody wants any.
        assert_eq!(negotiate_heartbeat((0, 0), (10_000, 10_000)), (0, 0));
        assert_eq!(negotiate_heartbeat((10_000, 10_000), (0, 0)), (0, 0));
        // The slower side of each pair wins.
        assert_eq!(
            negotiate_heartbeat((4_000, 1_000), (2_000, 3_000)),
            (2_000, 4_000)
        );
        // Client sends but does not want to receive.
        assert_eq!(negotiate_heartbeat((500, 0), (1_000, 1_000)), (0, 1_000));
        // Client only wants to receive.
        assert_eq!(negotiate_heartbeat((0, 500), (1_000, 1_000)), (1_000, 0));
    }
}
