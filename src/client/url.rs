//! Broker URLs as clients write them: `tcp://host:port`.

use std::fmt;
use std::net::SocketAddr;

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
}

/// One broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(text: &str) -> Result<BrokerUrl, UrlError> {
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
        Ok(BrokerUrl {
            scheme: scheme.to_string(),
            host: host.to_string(),
            port,
        })
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
}
