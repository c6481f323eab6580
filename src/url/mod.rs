//! Broker URLs as clients write them (a leaf module: it depends on nothing else of meshmq, so
//! config, client and network all parse URLs the same way): `tcp://host:port`, optionally with per-connection options
//! (`?connectionTimeout=5000&localAddress=127.0.0.2`, the names ActiveMQ's TCP transport uses).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

mod failover;

pub(crate) use failover::parse_uri_list;
pub use failover::{ConnectUrl, FailoverOptions, FailoverUrl};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not a broker URL: write tcp://HOST:PORT (or ssl:// or quic://), e.g. tcp://127.0.0.1:61616")]
    Malformed(String),
    #[error(
        "{url:?}: the {scheme}:// scheme is not one this client speaks; use tcp://, ssl:// or quic://"
    )]
    UnsupportedScheme { url: String, scheme: String },
    #[error("{0:?} has no valid port: write tcp://HOST:PORT with a port from 1 to 65535")]
    BadPort(String),
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{url:?}: unknown option(s) {unknown}; a broker URL takes connectionTimeout (ms) and localAddress (an IP)")]
    UnknownOption { url: String, unknown: String },
    #[error("{0:?} is not a failover URL: write failover:(tcp://HOST:PORT,tcp://HOST:PORT)?option=value&…")]
    FailoverMalformed(String),
    #[error("{url:?}: unknown failover option(s) {unknown}; the options are {known} (and nested.* for every broker URL)")]
    FailoverUnknownOption {
        url: String,
        unknown: String,
        known: String,
    },
    #[error("{url:?}: option {key}={value:?} is not valid: {hint}")]
    BadOption {
        url: String,
        key: String,
        value: String,
        hint: String,
    },
}

/// One broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// `connectionTimeout`: overrides `ClientOptions::connect_timeout` for this broker.
    pub connect_timeout: Option<Duration>,
    /// `localAddress`: overrides `ClientOptions::local_addr` for this broker.
    pub local_addr: Option<IpAddr>,
}

/// Splits `a=1&b=2` into pairs (an option without `=` has an empty value).
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

impl BrokerUrl {
    pub fn parse(text: &str) -> Result<BrokerUrl, UrlError> {
        BrokerUrl::parse_with(text, &[])
    }

    /// Parses `text`, then applies `extra` options (a failover URL's `nested.*`) on top of its
    /// own query options.
    pub fn parse_with(text: &str, extra: &[(String, String)]) -> Result<BrokerUrl, UrlError> {
        let text = text.trim();
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| UrlError::Malformed(text.to_string()))?;
        if !matches!(scheme, "tcp" | "ssl" | "quic") {
            return Err(UrlError::UnsupportedScheme {
                url: text.to_string(),
                scheme: scheme.to_string(),
            });
        }
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6
                .split_once("]:")
                .ok_or_else(|| UrlError::BadPort(text.to_string()))?;
            (h, p)
        } else {
            authority
                .rsplit_once(':')
                .ok_or_else(|| UrlError::BadPort(text.to_string()))?
        };
        if host.is_empty() {
            return Err(UrlError::Malformed(text.to_string()));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| UrlError::BadPort(text.to_string()))?;
        let mut url = BrokerUrl {
            scheme: scheme.to_string(),
            host: host.to_string(),
            port,
            connect_timeout: None,
            local_addr: None,
        };
        let own = rest.split_once('?').map(|(_, q)| query_pairs(q));
        let mut unknown = Vec::new();
        for (key, value) in own.iter().flatten().chain(extra) {
            let bad = |hint: &str| UrlError::BadOption {
                url: text.to_string(),
                key: key.clone(),
                value: value.clone(),
                hint: hint.to_string(),
            };
            match key.as_str() {
                "connectionTimeout" => {
                    let ms: u64 = value
                        .parse()
                        .map_err(|_| bad("write whole milliseconds, e.g. 5000"))?;
                    url.connect_timeout = (ms > 0).then(|| Duration::from_millis(ms));
                }
                "localAddress" => {
                    url.local_addr = Some(
                        value
                            .parse()
                            .map_err(|_| bad("write an IP address, e.g. 127.0.0.2"))?,
                    );
                }
                _ => unknown.push(key.clone()),
            }
        }
        if !unknown.is_empty() {
            return Err(UrlError::UnknownOption {
                url: text.to_string(),
                unknown: unknown.join(", "),
            });
        }
        Ok(url)
    }

    /// The same broker, compared by scheme, host and port (options aside).
    pub fn same_broker(&self, other: &BrokerUrl) -> bool {
        self.scheme == other.scheme && self.host == other.host && self.port == other.port
    }

    /// The socket address (DNS lookup for a host name).
    pub async fn resolve(&self) -> Result<SocketAddr, UrlError> {
        if let Ok(ip) = self.host.parse() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let resolve = |reason: String| UrlError::Resolve {
            host: self.host.clone(),
            reason,
        };
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| resolve(e.to_string()))?
            .next()
            .ok_or_else(|| resolve("no address".into()))
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let u = BrokerUrl::parse("tcp://127.0.0.1:61616").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 61616));
        assert_eq!(u.to_string(), "tcp://127.0.0.1:61616");
        assert_eq!(
            BrokerUrl::parse("tcp://[::1]:5").unwrap().to_string(),
            "tcp://[::1]:5"
        );
        assert_eq!(
            BrokerUrl::parse("tcp://localhost:1").unwrap().host,
            "localhost"
        );
        assert!(matches!(
            BrokerUrl::parse("127.0.0.1:1"),
            Err(UrlError::Malformed(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("tcp://h"),
            Err(UrlError::BadPort(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("tcp://h:0"),
            Err(UrlError::BadPort(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("stomp://h:1"),
            Err(UrlError::UnsupportedScheme { .. })
        ));
        assert_eq!(
            BrokerUrl::parse("quic://127.0.0.1:7").unwrap().scheme,
            "quic"
        );
        assert_eq!(BrokerUrl::parse("ssl://127.0.0.1:7").unwrap().scheme, "ssl");
    }

    #[test]
    fn options_are_parsed_and_unknown_ones_named() {
        let u = BrokerUrl::parse("tcp://127.0.0.1:1?connectionTimeout=250&localAddress=127.0.0.3")
            .unwrap();
        assert_eq!(u.connect_timeout, Some(Duration::from_millis(250)));
        assert_eq!(u.local_addr, Some("127.0.0.3".parse().unwrap()));
        assert_eq!(
            u.to_string(),
            "tcp://127.0.0.1:1",
            "options are not part of the address"
        );
        let e = BrokerUrl::parse("tcp://h:1?soTimeout=1&bogus")
            .unwrap_err()
            .to_string();
        assert!(e.contains("soTimeout, bogus"), "{e}");
        let e = BrokerUrl::parse("tcp://h:1?connectionTimeout=soon")
            .unwrap_err()
            .to_string();
        assert!(e.contains("connectionTimeout"), "{e}");
        let nested = [("localAddress".to_string(), "127.0.0.9".to_string())];
        let u = BrokerUrl::parse_with("tcp://h:1", &nested).unwrap();
        assert_eq!(u.local_addr, Some("127.0.0.9".parse().unwrap()));
    }
}
