//! Parsers for the values a topology writes as strings: sizes, durations, addresses, URLs and
//! group filters. Each answers the typed value or a [`Refusal`] saying what is wrong with the
//! text and what to write instead; the caller adds the file and key.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::error::Refusal;

const SIZE_FIX: &str =
    "write a whole number of bytes with an optional unit KiB, MiB, GiB, TiB, KB, MB or GB, e.g. \"64MiB\"";

/// Parses `"64MiB"`, `"512KiB"`, `"100MB"`, `"4096"` (bytes). Units are case-sensitive: binary
/// KiB/MiB/GiB/TiB, decimal KB/MB/GB; a space between number and unit is allowed.
pub fn parse_size(text: &str) -> Result<u64, Refusal> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(Refusal::new(format!("{text:?} has no number"), SIZE_FIX));
    }
    if unit.starts_with('.') || unit.starts_with(',') {
        return Err(Refusal::new(
            format!("{text:?} is not a whole number"),
            "write a whole number in a smaller unit, e.g. \"1536MiB\" instead of \"1.5GiB\"",
        ));
    }
    let scale: u64 = match unit {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(Refusal::new(
                format!("{text:?} has an unknown unit {other:?}"),
                SIZE_FIX,
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| {
            Refusal::new(
                format!("{text:?} is too large"),
                "write at most 16777215TiB (2^64 - 1 bytes)",
            )
        })
}

/// Parses a `humantime` duration such as `"1s"`, `"500ms"` or `"1m 30s"`.
pub fn parse_duration(text: &str) -> Result<Duration, Refusal> {
    humantime::parse_duration(text).map_err(|e| {
        Refusal::new(
            format!("{text:?} is not a duration ({e})"),
            "write a number and a unit, e.g. \"500ms\", \"10s\" or \"1m\"",
        )
    })
}

/// Transport scheme of a listener URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    Tcp,
    Ssl,
    Stomp,
    StompSsl,
    Quic,
    Mqtt,
    MqttSsl,
}

impl Scheme {
    pub const ALL: [Scheme; 7] = [
        Scheme::Tcp,
        Scheme::Ssl,
        Scheme::Stomp,
        Scheme::StompSsl,
        Scheme::Quic,
        Scheme::Mqtt,
        Scheme::MqttSsl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Ssl => "ssl",
            Scheme::Stomp => "stomp",
            Scheme::StompSsl => "stomp+ssl",
            Scheme::Quic => "quic",
            Scheme::Mqtt => "mqtt",
            Scheme::MqttSsl => "mqtt+ssl",
        }
    }

    /// Schemes whose listener needs a certificate and key (QUIC is always encrypted).
    pub fn is_tls(self) -> bool {
        matches!(
            self,
            Scheme::Ssl | Scheme::StompSsl | Scheme::MqttSsl | Scheme::Quic
        )
    }

    /// Schemes that serve the native protocol (the ones failover clients and bridges dial).
    pub fn is_native(self) -> bool {
        matches!(self, Scheme::Tcp | Scheme::Ssl | Scheme::Quic)
    }

    /// A port used in examples of this scheme.
    fn example_port(self) -> u16 {
        match self {
            Scheme::Tcp => 61616,
            Scheme::Ssl => 61617,
            Scheme::Stomp => 61613,
            Scheme::StompSsl => 61612,
            Scheme::Quic => 61618,
            Scheme::Mqtt => 1883,
            Scheme::MqttSsl => 8883,
        }
    }

    fn parse(text: &str) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a listener binds: `scheme://ip:port`, always an IP literal and a non-zero port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerUrl {
    pub scheme: Scheme,
    pub addr: SocketAddr,
}

impl fmt::Display for ListenerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.addr)
    }
}

/// A host (DNS name or IP) and port someone else dials, e.g. a ZooKeeper server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// A DNS name or an IP literal, IPv6 without brackets.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The URL clients are told to dial for a listener (`advertise`): any host name is allowed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientUrl {
    pub scheme: Scheme,
    pub target: HostPort,
}

impl fmt::Display for ClientUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.target)
    }
}

const SCHEME_LIST: &str = "tcp, ssl, stomp, stomp+ssl, mqtt, mqtt+ssl or quic";

/// Splits `host:port` / `[v6]:port`; the host comes back without brackets, the port as text.
enum Split<'a> {
    HostPort(&'a str, &'a str),
    NoPort,
    UnbracketedV6,
}

fn split_host_port(text: &str) -> Split<'_> {
    if let Some(rest) = text.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((_, "")) => Split::NoPort,
            Some((host, after)) => match after.strip_prefix(':') {
                Some(port) => Split::HostPort(host, port),
                None => Split::NoPort,
            },
            None => Split::NoPort,
        };
    }
    match text.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Split::UnbracketedV6,
        Some((host, port)) => Split::HostPort(host, port),
        None => Split::NoPort,
    }
}

fn parse_port(port: &str) -> Option<u16> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => None,
        Ok(p) => Some(p),
    }
}

/// `localhost` means 127.0.0.1; anything else must be an IP literal.
fn parse_ip(host: &str) -> Option<IpAddr> {
    if host == "localhost" {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    host.parse().ok()
}

fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Parses `IP:PORT` (or `[v6]:PORT`, `localhost:PORT`); `example` is shown in fixes.
pub fn parse_socket_addr(text: &str, example: &str) -> Result<SocketAddr, Refusal> {
    let write = format!("write IP:PORT, e.g. {example}");
    if text.contains("://") {
        return Err(Refusal::new(
            format!("{text:?} is a URL, not an address"),
            format!("write IP:PORT without a scheme, e.g. {example}"),
        ));
    }
    let (host, port) = match split_host_port(text) {
        Split::HostPort(host, port) => (host, port),
        Split::NoPort => return Err(Refusal::new(format!("{text:?} has no port"), write)),
        Split::UnbracketedV6 => {
            return Err(Refusal::new(
                format!("{text:?} has an IPv6 address without brackets"),
                "write [IPv6]:PORT, e.g. [::1]:8161",
            ))
        }
    };
    let Some(ip) = parse_ip(host) else {
        return Err(Refusal::new(
            format!("{text:?} has host {host:?}, which is not an IP address"),
            format!("{write}, with an IP literal (127.0.0.1, [::1]) or localhost"),
        ));
    };
    let Some(port) = parse_port(port) else {
        return Err(Refusal::new(
            format!("{text:?} has an invalid port {port:?}"),
            format!("use a port from 1 to 65535, e.g. {example}"),
        ));
    };
    Ok(SocketAddr::new(ip, port))
}

/// Parses an IP literal or `localhost`.
pub fn parse_bind_ip(text: &str) -> Result<IpAddr, Refusal> {
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    parse_ip(unbracketed).ok_or_else(|| {
        Refusal::new(
            format!("{text:?} is not an IP address"),
            "write an IP literal such as 127.0.0.1 or ::1, without a port",
        )
    })
}

/// Splits `scheme://rest`, refusing unknown schemes.
fn split_scheme(text: &str) -> Result<(Scheme, &str), Refusal> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(Refusal::new(
            format!("{text:?} has no scheme"),
            format!("write SCHEME://IP:PORT with SCHEME one of {SCHEME_LIST}, e.g. tcp://127.0.0.1:61616"),
        ));
    };
    let Some(scheme) = Scheme::parse(scheme) else {
        return Err(Refusal::new(
            format!("{text:?} has an unknown scheme {scheme:?}"),
            format!("use {SCHEME_LIST}, e.g. tcp://127.0.0.1:61616"),
        ));
    };
    if rest.contains(['/', '?', '#']) {
        return Err(Refusal::new(
            format!("{text:?} has a path or query after the address"),
            format!("write only {scheme}://HOST:PORT; listener options are keys of its [[group.member.listener]] table"),
        ));
    }
    Ok((scheme, rest))
}

/// Parses a listener URL `scheme://IP:PORT`.
pub fn parse_listener_url(text: &str) -> Result<ListenerUrl, Refusal> {
    let (scheme, rest) = split_scheme(text)?;
    let example = format!("{scheme}://127.0.0.1:{}", scheme.example_port());
    let (host, port) = match split_host_port(rest) {
        Split::HostPort(host, port) => (host, port),
        Split::NoPort => {
            return Err(Refusal::new(
                format!("{text:?} has no port"),
                format!("write {scheme}://IP:PORT, e.g. {example}"),
            ))
        }
        Split::UnbracketedV6 => {
            return Err(Refusal::new(
                format!("{text:?} has an IPv6 address without brackets"),
                format!(
                    "write {scheme}://[IPv6]:PORT, e.g. {scheme}://[::1]:{}",
                    scheme.example_port()
                ),
            ))
        }
    };
    let Some(ip) = parse_ip(host) else {
        return Err(Refusal::new(
            format!("{text:?} has host {host:?}, which is not an IP address"),
            format!("a listener binds an IP literal (127.0.0.1, 0.0.0.0, [::1]) or localhost, e.g. {example}; set advertise for the name clients dial"),
        ));
    };
    let Some(port) = parse_port(port) else {
        return Err(Refusal::new(
            format!("{text:?} has an invalid port {port:?}"),
            format!("use a port from 1 to 65535, e.g. {example}"),
        ));
    };
    Ok(ListenerUrl {
        scheme,
        addr: SocketAddr::new(ip, port),
    })
}

/// Parses `host:port` where host is a DNS name or an IP literal.
pub fn parse_host_port(text: &str, example: &str) -> Result<HostPort, Refusal> {
    let (host, port) = match split_host_port(text) {
        Split::HostPort(host, port) => (host, port),
        Split::NoPort => {
            return Err(Refusal::new(
                format!("{text:?} has no port"),
                format!("write HOST:PORT, e.g. {example}"),
            ))
        }
        Split::UnbracketedV6 => {
            return Err(Refusal::new(
                format!("{text:?} has an IPv6 address without brackets"),
                "write [IPv6]:PORT, e.g. [::1]:2181",
            ))
        }
    };
    if host.parse::<IpAddr>().is_err() && !is_host_name(host) {
        return Err(Refusal::new(
            format!("{text:?} has host {host:?}, which is neither a host name nor an IP address"),
            format!("write HOST:PORT, e.g. {example}"),
        ));
    }
    let Some(port) = parse_port(port) else {
        return Err(Refusal::new(
            format!("{text:?} has an invalid port {port:?}"),
            format!("use a port from 1 to 65535, e.g. {example}"),
        ));
    };
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// Parses an advertised client URL `scheme://HOST:PORT` (host names allowed).
pub fn parse_client_url(text: &str) -> Result<ClientUrl, Refusal> {
    let (scheme, rest) = split_scheme(text)?;
    let example = format!("{scheme}://broker1.example.com:{}", scheme.example_port());
    let target = parse_host_port(rest, &example)?;
    Ok(ClientUrl { scheme, target })
}

/// Compiles a cluster-update filter: a regex that must match a whole group name (as Java's
/// `String.matches`, which ActiveMQ's `updateClusterFilter` uses).
pub fn parse_group_filter(pattern: &str) -> Result<regex::Regex, Refusal> {
    let refuse = |e: regex::Error| {
        // regex explains syntax errors over several lines (pattern, caret, reason); keep the
        // reason so the error stays on one line.
        let text = e.to_string();
        let reason = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or(&text)
            .trim()
            .to_string();
        Refusal::new(
            format!("{pattern:?} is not a valid regex ({reason})"),
            "write a regex over group names, e.g. \"edge-.*\"",
        )
    };
    regex::Regex::new(pattern).map_err(refuse)?;
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(refuse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_unit() {
        let cases = [
            ("4096", 4096),
            ("0", 0),
            ("512KiB", 512 << 10),
            ("64MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("100MB", 100_000_000),
            ("3KB", 3_000),
            ("1GB", 1_000_000_000),
            ("64 MiB", 64 << 20),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn sizes_refused_with_an_example() {
        let problem = |t| parse_size(t).map_err(|r| r.problem);
        assert_eq!(
            problem("64mib"),
            Err("\"64mib\" has an unknown unit \"mib\"".into())
        );
        assert_eq!(
            problem("64M"),
            Err("\"64M\" has an unknown unit \"M\"".into())
        );
        assert_eq!(
            problem("1TB"),
            Err("\"1TB\" has an unknown unit \"TB\"".into())
        );
        assert_eq!(problem("MiB"), Err("\"MiB\" has no number".into()));
        assert_eq!(problem(""), Err("\"\" has no number".into()));
        assert_eq!(problem("-1"), Err("\"-1\" has no number".into()));
        assert_eq!(
            problem("1.5GiB"),
            Err("\"1.5GiB\" is not a whole number".into())
        );
        assert_eq!(
            problem("16777216TiB"),
            Err("\"16777216TiB\" is too large".into())
        );
        assert!(parse_size("x")
            .map_err(|r| r.fix)
            .is_err_and(|f| f.contains("\"64MiB\"")));
    }

    #[test]
    fn durations_use_humantime() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("10").map_err(|r| r.problem),
            Err("\"10\" is not a duration (time unit needed, for example 10sec or 10ms)".into())
        );
    }

    #[test]
    fn listener_urls() {
        let url = parse_listener_url("stomp+ssl://[::1]:61612").map(|u| u.to_string());
        assert_eq!(url, Ok("stomp+ssl://[::1]:61612".into()));
        let url = parse_listener_url("tcp://localhost:61616").map(|u| u.to_string());
        assert_eq!(url, Ok("tcp://127.0.0.1:61616".into()));
        let url = parse_listener_url("quic://0.0.0.0:1").map(|u| (u.scheme, u.addr.port()));
        assert_eq!(url, Ok((Scheme::Quic, 1)));
    }

    #[test]
    fn listener_urls_refused_with_a_reason() {
        let cases = [
            ("127.0.0.1:61616", "\"127.0.0.1:61616\" has no scheme"),
            (
                "http://127.0.0.1:80",
                "\"http://127.0.0.1:80\" has an unknown scheme \"http\"",
            ),
            ("tcp://localhost", "\"tcp://localhost\" has no port"),
            (
                "tcp://127.0.0.1:0",
                "\"tcp://127.0.0.1:0\" has an invalid port \"0\"",
            ),
            (
                "tcp://127.0.0.1:65536",
                "\"tcp://127.0.0.1:65536\" has an invalid port \"65536\"",
            ),
            (
                "tcp://127.0.0.1:",
                "\"tcp://127.0.0.1:\" has an invalid port \"\"",
            ),
            (
                "tcp://::1:61616",
                "\"tcp://::1:61616\" has an IPv6 address without brackets",
            ),
            ("tcp://[::1]", "\"tcp://[::1]\" has no port"),
            (
                "tcp://broker1:61616",
                "\"tcp://broker1:61616\" has host \"broker1\", which is not an IP address",
            ),
            (
                "tcp://127.0.0.1:61616?x=1",
                "\"tcp://127.0.0.1:61616?x=1\" has a path or query after the address",
            ),
            (
                "TCP://127.0.0.1:1",
                "\"TCP://127.0.0.1:1\" has an unknown scheme \"TCP\"",
            ),
        ];
        for (text, problem) in cases {
            assert_eq!(
                parse_listener_url(text).map_err(|r| r.problem),
                Err(problem.into())
            );
        }
        assert_eq!(
            parse_listener_url("tcp://localhost").map_err(|r| r.fix),
            Err("write tcp://IP:PORT, e.g. tcp://127.0.0.1:61616".into())
        );
    }

    #[test]
    fn socket_addrs() {
        let ex = "127.0.0.1:8161";
        assert_eq!(
            parse_socket_addr("127.0.0.1:8161", ex).map(|a| a.port()),
            Ok(8161)
        );
        assert_eq!(
            parse_socket_addr("[::1]:8161", ex).map(|a| a.is_ipv6()),
            Ok(true)
        );
        assert_eq!(
            parse_socket_addr("localhost:1", ex).map(|a| a.to_string()),
            Ok("127.0.0.1:1".into())
        );
        for bad in [
            "127.0.0.1",
            "tcp://127.0.0.1:1",
            "host:1",
            "127.0.0.1:0",
            "::1:80",
        ] {
            assert!(parse_socket_addr(bad, ex).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_ports_and_client_urls_allow_names() {
        let hp = parse_host_port("zk1.example.com:2181", "zk:2181").map(|h| h.to_string());
        assert_eq!(hp, Ok("zk1.example.com:2181".into()));
        let hp = parse_host_port("[::1]:2181", "zk:2181").map(|h| h.to_string());
        assert_eq!(hp, Ok("[::1]:2181".into()));
        assert!(parse_host_port("bad host:1", "zk:2181").is_err());
        assert!(parse_host_port("-bad:1", "zk:2181").is_err());
        let url = parse_client_url("ssl://broker.example.com:61617").map(|u| u.to_string());
        assert_eq!(url, Ok("ssl://broker.example.com:61617".into()));
        assert!(parse_client_url("ssl://broker.example.com").is_err());
    }

    #[test]
    fn bind_ips() {
        assert_eq!(
            parse_bind_ip("10.0.0.1").map(|ip| ip.to_string()),
            Ok("10.0.0.1".into())
        );
        assert_eq!(
            parse_bind_ip("[::1]").map(|ip| ip.to_string()),
            Ok("::1".into())
        );
        assert!(parse_bind_ip("10.0.0.1:80").is_err());
    }

    #[test]
    fn group_filters_match_whole_names() {
        let Ok(filter) = parse_group_filter("edge-.*") else {
            panic!("edge-.* must compile");
        };
        assert!(filter.is_match("edge-1"));
        assert!(!filter.is_match("hub-edge-1"));
        let Ok(alternation) = parse_group_filter("a|b") else {
            panic!("a|b must compile");
        };
        assert!(alternation.is_match("b"));
        assert!(!alternation.is_match("ab"));
        assert_eq!(
            parse_group_filter("edge-(").err().map(|r| r.problem),
            Some("\"edge-(\" is not a valid regex (unclosed group)".into())
        );
    }
}
