//! Failover URLs: `failover:(uri1,uri2,…)?options`, with the option names and defaults of
//! ActiveMQ's failover transport, parsed into [`FailoverUrl`]. Unknown options are an error that
//! names them; `nested.*` options are applied to every broker URL inside the parentheses.

use std::path::PathBuf;
use std::time::Duration;

use super::{query_pairs, BrokerUrl, UrlError};

/// The failover options (ActiveMQ names in the comments; defaults as ActiveMQ's).
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverOptions {
    /// `initialReconnectDelay` (10 ms): wait before the first attempt after a working
    /// connection broke.
    pub initial_reconnect_delay: Duration,
    /// `maxReconnectDelay` (30 s): the backoff never waits longer.
    pub max_reconnect_delay: Duration,
    /// `useExponentialBackOff` (true).
    pub use_exponential_backoff: bool,
    /// `reconnectDelayExponent` (2.0): the backoff multiplier.
    pub reconnect_delay_exponent: f64,
    /// `maxReconnectAttempts` (-1 = unlimited, 0 = never reconnect): rounds over the URI list
    /// before the client gives up.
    pub max_reconnect_attempts: i64,
    /// `startupMaxReconnectAttempts` (-1 = as `maxReconnectAttempts`): the limit before the
    /// first successful connection.
    pub startup_max_reconnect_attempts: i64,
    /// `randomize` (true): shuffle the URI list before each round.
    pub randomize: bool,
    /// `backup` (false): keep standby connections ready.
    pub backup: bool,
    /// `backupPoolSize` (1).
    pub backup_pool_size: usize,
    /// `priorityBackup` (false): while not on a priority broker, keep trying to get back to one.
    pub priority_backup: bool,
    /// `priorityURIs` (empty = the first URI of the list).
    pub priority_uris: Vec<BrokerUrl>,
    /// `timeout` (-1 = wait forever): how long a send waits for a connection.
    pub timeout: Option<Duration>,
    /// `trackMessages` (false): keep fire-and-forget sends to re-send them after a failover.
    pub track_messages: bool,
    /// `maxCacheSize` (131072 bytes): the tracked sends kept; the oldest go first.
    pub max_cache_size: usize,
    /// `updateURIsSupported` (true): accept the URIs brokers push.
    pub update_uris_supported: bool,
    /// `updateURIsURL` (none): a file with a comma list of URIs, re-read before each reconnect.
    pub update_uris_url: Option<PathBuf>,
    /// `rebalanceUpdateURIs` (true): a change in that file moves the client if its broker is no
    /// longer listed.
    pub rebalance_update_uris: bool,
    /// `reconnectSupported` (true): obey a broker's request to reconnect elsewhere.
    pub reconnect_supported: bool,
    /// `warnAfterReconnectAttempts` (10): log a warning on the first failed round and every N
    /// rounds after (≤ 0: never).
    pub warn_after_reconnect_attempts: i64,
}

impl Default for FailoverOptions {
    fn default() -> Self {
        FailoverOptions {
            initial_reconnect_delay: Duration::from_millis(10),
            max_reconnect_delay: Duration::from_secs(30),
            use_exponential_backoff: true,
            reconnect_delay_exponent: 2.0,
            max_reconnect_attempts: -1,
            startup_max_reconnect_attempts: -1,
            randomize: true,
            backup: false,
            backup_pool_size: 1,
            priority_backup: false,
            priority_uris: Vec::new(),
            timeout: None,
            track_messages: false,
            max_cache_size: 131_072,
            update_uris_supported: true,
            update_uris_url: None,
            rebalance_update_uris: true,
            reconnect_supported: true,
            warn_after_reconnect_attempts: 10,
        }
    }
}

impl FailoverOptions {
    /// The options set away from their defaults that only a client can honour (a network
    /// connector takes the reconnect delays, `randomize` and `nested.*`).
    pub fn client_only_changes(&self) -> Vec<&'static str> {
        let d = FailoverOptions::default();
        let mut out = Vec::new();
        let mut check = |changed: bool, name: &'static str| {
            if changed {
                out.push(name);
            }
        };
        check(
            self.max_reconnect_attempts != d.max_reconnect_attempts,
            "maxReconnectAttempts",
        );
        check(
            self.startup_max_reconnect_attempts != d.startup_max_reconnect_attempts,
            "startupMaxReconnectAttempts",
        );
        check(self.backup != d.backup, "backup");
        check(
            self.backup_pool_size != d.backup_pool_size,
            "backupPoolSize",
        );
        check(self.priority_backup != d.priority_backup, "priorityBackup");
        check(self.priority_uris != d.priority_uris, "priorityURIs");
        check(self.timeout != d.timeout, "timeout");
        check(self.track_messages != d.track_messages, "trackMessages");
        check(self.max_cache_size != d.max_cache_size, "maxCacheSize");
        check(
            self.update_uris_supported != d.update_uris_supported,
            "updateURIsSupported",
        );
        check(self.update_uris_url != d.update_uris_url, "updateURIsURL");
        check(
            self.rebalance_update_uris != d.rebalance_update_uris,
            "rebalanceUpdateURIs",
        );
        check(
            self.reconnect_supported != d.reconnect_supported,
            "reconnectSupported",
        );
        check(
            self.warn_after_reconnect_attempts != d.warn_after_reconnect_attempts,
            "warnAfterReconnectAttempts",
        );
        out
    }
}

const OPTIONS: &[&str] = &[
    "initialReconnectDelay",
    "maxReconnectDelay",
    "useExponentialBackOff",
    "reconnectDelayExponent",
    "maxReconnectAttempts",
    "startupMaxReconnectAttempts",
    "randomize",
    "backup",
    "backupPoolSize",
    "priorityBackup",
    "priorityURIs",
    "timeout",
    "trackMessages",
    "maxCacheSize",
    "updateURIsSupported",
    "updateURIsURL",
    "rebalanceUpdateURIs",
    "reconnectSupported",
    "warnAfterReconnectAttempts",
];

/// A parsed `failover:` URL.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverUrl {
    /// The static URIs, in the order written; never dropped by a broker's push.
    pub uris: Vec<BrokerUrl>,
    pub options: FailoverOptions,
    /// The `nested.*` options (without the prefix), also applied to URIs learned later.
    pub nested: Vec<(String, String)>,
}

/// Any URL a client accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectUrl {
    Single(BrokerUrl),
    Failover(FailoverUrl),
}

impl ConnectUrl {
    /// As a failover URL: a single broker URL is a list of one with the default options.
    pub fn into_failover(self) -> FailoverUrl {
        match self {
            ConnectUrl::Failover(f) => f,
            ConnectUrl::Single(u) => FailoverUrl {
                uris: vec![u],
                options: FailoverOptions::default(),
                nested: Vec::new(),
            },
        }
    }

    pub fn parse(text: &str) -> Result<ConnectUrl, UrlError> {
        let t = text.trim();
        match t.strip_prefix("failover:") {
            Some(_) => FailoverUrl::parse(t).map(ConnectUrl::Failover),
            None => BrokerUrl::parse(t).map(ConnectUrl::Single),
        }
    }
}

/// Splits a comma list of broker URLs, each parsed with `nested` options on top.
pub(crate) fn parse_uri_list(
    list: &str,
    nested: &[(String, String)],
) -> Result<Vec<BrokerUrl>, UrlError> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| BrokerUrl::parse_with(u, nested))
        .collect()
}

impl FailoverUrl {
    pub fn parse(text: &str) -> Result<FailoverUrl, UrlError> {
        let text = text.trim();
        let malformed = || UrlError::FailoverMalformed(text.to_string());
        let body = text.strip_prefix("failover:").ok_or_else(malformed)?;
        let body = body.strip_prefix("//").unwrap_or(body);
        let (list, query) = if let Some(inner) = body.strip_prefix('(') {
            let close = inner.rfind(')').ok_or_else(malformed)?;
            let rest = &inner[close + 1..];
            let query = match rest.strip_prefix('?') {
                Some(q) => q,
                None if rest.is_empty() => "",
                None => return Err(malformed()),
            };
            (&inner[..close], query)
        } else {
            // `failover:tcp://a:1,tcp://b:2`: no failover options; each URL keeps its own.
            (body, "")
        };
        let mut options = FailoverOptions::default();
        let mut nested = Vec::new();
        let mut unknown = Vec::new();
        let mut priority_text = None;
        for (key, value) in query_pairs(query) {
            if let Some(inner) = key.strip_prefix("nested.") {
                nested.push((inner.to_string(), value));
                continue;
            }
            let bad = |hint: &str| UrlError::BadOption {
                url: text.to_string(),
                key: key.clone(),
                value: value.clone(),
                hint: hint.to_string(),
            };
            let ms = || -> Result<Duration, UrlError> {
                value
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| bad("write whole milliseconds, e.g. 1000"))
            };
            let flag = || -> Result<bool, UrlError> {
                match value.to_ascii_lowercase().as_str() {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    _ => Err(bad("write true or false")),
                }
            };
            let int = || -> Result<i64, UrlError> {
                value
                    .parse::<i64>()
                    .map_err(|_| bad("write a whole number (-1 for no limit)"))
            };
            let o = &mut options;
            match key.as_str() {
                "initialReconnectDelay" => o.initial_reconnect_delay = ms()?,
                "maxReconnectDelay" => o.max_reconnect_delay = ms()?,
                "useExponentialBackOff" => o.use_exponential_backoff = flag()?,
                "reconnectDelayExponent" => {
                    o.reconnect_delay_exponent = value
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && *x >= 1.0)
                        .ok_or_else(|| bad("write a number of at least 1, e.g. 2.0"))?
                }
                "maxReconnectAttempts" => o.max_reconnect_attempts = int()?,
                "startupMaxReconnectAttempts" => o.startup_max_reconnect_attempts = int()?,
                "randomize" => o.randomize = flag()?,
                "backup" => o.backup = flag()?,
                "backupPoolSize" => {
                    o.backup_pool_size = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n <= 16)
                        .ok_or_else(|| bad("write a number from 0 to 16"))?
                }
                "priorityBackup" => o.priority_backup = flag()?,
                "priorityURIs" => priority_text = Some(value.clone()),
                "timeout" => {
                    let t = int()?;
                    o.timeout = (t >= 0).then(|| Duration::from_millis(t as u64));
                }
                "trackMessages" => o.track_messages = flag()?,
                "maxCacheSize" => {
                    o.max_cache_size = value
                        .parse::<usize>()
                        .map_err(|_| bad("write a size in bytes, e.g. 131072"))?
                }
                "updateURIsSupported" => o.update_uris_supported = flag()?,
                "updateURIsURL" => {
                    let path = value.strip_prefix("file://").unwrap_or(&value);
                    if path.is_empty() || path.contains("://") {
                        return Err(bad(
                            "write the path of a local file (or file:///path) holding a comma list of URIs",
                        ));
                    }
                    o.update_uris_url = Some(PathBuf::from(path));
                }
                "rebalanceUpdateURIs" => o.rebalance_update_uris = flag()?,
                "reconnectSupported" => o.reconnect_supported = flag()?,
                "warnAfterReconnectAttempts" => o.warn_after_reconnect_attempts = int()?,
                _ => unknown.push(key.clone()),
            }
        }
        if !unknown.is_empty() {
            return Err(UrlError::FailoverUnknownOption {
                url: text.to_string(),
                unknown: unknown.join(", "),
                known: OPTIONS.join(", "),
            });
        }
        let uris = parse_uri_list(list, &nested)?;
        if uris.is_empty() {
            return Err(malformed());
        }
        if let Some(p) = priority_text {
            options.priority_uris = parse_uri_list(&p, &nested)?;
        }
        Ok(FailoverUrl {
            uris,
            options,
            nested,
        })
    }

    /// Whether `url` is a priority broker: one of `priorityURIs`, or the first URI when none
    /// are given.
    pub fn is_priority(&self, url: &BrokerUrl) -> bool {
        if self.options.priority_uris.is_empty() {
            self.uris.first().is_some_and(|p| p.same_broker(url))
        } else {
            self.options
                .priority_uris
                .iter()
                .any(|p| p.same_broker(url))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_activemqs() {
        let f = FailoverUrl::parse("failover:(tcp://127.0.0.1:1,tcp://127.0.0.1:2)").unwrap();
        assert_eq!(f.uris.len(), 2);
        assert_eq!(f.options, FailoverOptions::default());
        let o = FailoverOptions::default();
        assert_eq!(o.initial_reconnect_delay, Duration::from_millis(10));
        assert_eq!(o.max_reconnect_delay, Duration::from_secs(30));
        assert_eq!(o.max_reconnect_attempts, -1);
        assert_eq!(o.max_cache_size, 131_072);
        assert!(o.randomize && o.update_uris_supported && o.reconnect_supported);
        assert_eq!(o.timeout, None);
    }

    #[test]
    fn every_option_parses() {
        let f = FailoverUrl::parse(
            "failover:(tcp://a:1,tcp://b:2?connectionTimeout=7)?initialReconnectDelay=5&maxReconnectDelay=900\
             &useExponentialBackOff=false&reconnectDelayExponent=1.5&maxReconnectAttempts=3\
             &startupMaxReconnectAttempts=0&randomize=false&backup=true&backupPoolSize=2\
             &priorityBackup=true&priorityURIs=tcp://b:2&timeout=2500&trackMessages=true\
             &maxCacheSize=1024&updateURIsSupported=false&updateURIsURL=file:///tmp/uris\
             &rebalanceUpdateURIs=false&reconnectSupported=false&warnAfterReconnectAttempts=0\
             &nested.localAddress=127.0.0.5",
        )
        .unwrap();
        let o = &f.options;
        assert_eq!(o.initial_reconnect_delay, Duration::from_millis(5));
        assert_eq!(o.max_reconnect_delay, Duration::from_millis(900));
        assert!(!o.use_exponential_backoff);
        assert_eq!(o.reconnect_delay_exponent, 1.5);
        assert_eq!(
            (o.max_reconnect_attempts, o.startup_max_reconnect_attempts),
            (3, 0)
        );
        assert!(!o.randomize && o.backup && o.priority_backup && o.track_messages);
        assert_eq!(o.backup_pool_size, 2);
        assert_eq!(o.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(o.max_cache_size, 1024);
        assert!(!o.update_uris_supported && !o.rebalance_update_uris && !o.reconnect_supported);
        assert_eq!(o.update_uris_url, Some(PathBuf::from("/tmp/uris")));
        assert_eq!(o.warn_after_reconnect_attempts, 0);
        assert!(f.is_priority(&BrokerUrl::parse("tcp://b:2").unwrap()));
        assert!(!f.is_priority(&BrokerUrl::parse("tcp://a:1").unwrap()));
        // nested.* reaches every URI, on top of the URI's own options.
        for u in &f.uris {
            assert_eq!(u.local_addr, Some("127.0.0.5".parse().unwrap()));
        }
        assert_eq!(f.uris[1].connect_timeout, Some(Duration::from_millis(7)));
    }

    #[test]
    fn the_first_uri_is_the_priority_one_by_default() {
        let f = FailoverUrl::parse("failover:(tcp://a:1,tcp://b:2)?priorityBackup=true").unwrap();
        assert!(f.is_priority(&BrokerUrl::parse("tcp://a:1").unwrap()));
        assert!(!f.is_priority(&BrokerUrl::parse("tcp://b:2").unwrap()));
    }

    #[test]
    fn unknown_and_bad_options_are_named() {
        let e = FailoverUrl::parse("failover:(tcp://a:1)?randomise=false&jitter=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("randomise, jitter"), "{e}");
        assert!(e.contains("randomize"), "the known options are listed: {e}");
        let e = FailoverUrl::parse("failover:(tcp://a:1)?timeout=soon")
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeout"), "{e}");
        let e = FailoverUrl::parse("failover:(tcp://a:1)?nested.bogus=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = FailoverUrl::parse("failover:(tcp://a:1)?updateURIsURL=http://x/y")
            .unwrap_err()
            .to_string();
        assert!(e.contains("local file"), "{e}");
        for bad in [
            "failover:",
            "failover:()",
            "failover:(tcp://a:1",
            "failover:(tcp://a:1)x",
        ] {
            assert!(FailoverUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_lists_and_single_urls() {
        let f = FailoverUrl::parse("failover:tcp://a:1,tcp://b:2").unwrap();
        assert_eq!(f.uris.len(), 2);
        assert!(matches!(
            ConnectUrl::parse("tcp://a:1").unwrap(),
            ConnectUrl::Single(_)
        ));
        assert!(matches!(
            ConnectUrl::parse(" failover:(tcp://a:1) ").unwrap(),
            ConnectUrl::Failover(_)
        ));
        assert!(ConnectUrl::parse("failover:(stomp://a:1)").is_err());
    }
}
