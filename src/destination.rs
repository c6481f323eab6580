//! Destination names and wildcard patterns, as ActiveMQ users write them.
//!
//! A destination is `queue://name`, `topic://name`, `temp-queue://name` or `temp-topic://name`;
//! names are dot-separated segments. A pattern is a destination whose segments may be `*` (one
//! segment) or `>` (the rest, last segment only). Parsing is the only way to build either, so a
//! `Destination` never holds a wildcard and a `DestinationPattern` is always well formed.
//!
//! A leaf module: it depends on nothing else of meshmq, so the broker, the store, the
//! configuration, ACLs and every protocol name destinations the same way without depending on
//! each other.

use std::fmt;
use std::sync::Arc;

/// Longest destination name accepted (bytes, without the scheme).
pub const MAX_NAME_LEN: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Queue,
    Topic,
    TempQueue,
    TempTopic,
}

impl Kind {
    pub fn scheme(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::Topic => "topic",
            Kind::TempQueue => "temp-queue",
            Kind::TempTopic => "temp-topic",
        }
    }

    /// Queues (and temp queues) have competing consumers; topics fan out.
    pub fn is_queue(self) -> bool {
        matches!(self, Kind::Queue | Kind::TempQueue)
    }

    pub fn is_temp(self) -> bool {
        matches!(self, Kind::TempQueue | Kind::TempTopic)
    }

    fn from_scheme(s: &str) -> Option<Kind> {
        match s {
            "queue" => Some(Kind::Queue),
            "topic" => Some(Kind::Topic),
            "temp-queue" => Some(Kind::TempQueue),
            "temp-topic" => Some(Kind::TempTopic),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("{0:?} is not a destination: write queue://NAME, topic://NAME, temp-queue://NAME or temp-topic://NAME")]
    NoScheme(String),
    #[error(
        "{0:?} has an unknown destination kind {1:?}: use queue, topic, temp-queue or temp-topic"
    )]
    UnknownKind(String, String),
    #[error("{0:?} has an empty name")]
    Empty(String),
    #[error("{0:?} is longer than {MAX_NAME_LEN} bytes")]
    TooLong(String),
    #[error("{0:?} has an empty segment: names are dot-separated words such as orders.eu")]
    EmptySegment(String),
    #[error("{0:?} contains whitespace or a control character")]
    BadCharacter(String),
    #[error("{0:?} contains a wildcard (* or >): wildcards are allowed in subscriptions and patterns, not here")]
    Wildcard(String),
    #[error("{0:?} uses '>' before the last segment: '>' matches the rest and must come last")]
    RestNotLast(String),
    #[error("{0:?} mixes a wildcard with other characters in one segment: * and > stand alone between dots")]
    PartialWildcard(String),
}

fn split_scheme(text: &str) -> Result<(Kind, &str), DestinationError> {
    let (scheme, name) = text
        .split_once("://")
        .ok_or_else(|| DestinationError::NoScheme(text.to_string()))?;
    let kind = Kind::from_scheme(scheme)
        .ok_or_else(|| DestinationError::UnknownKind(text.to_string(), scheme.to_string()))?;
    if name.is_empty() {
        return Err(DestinationError::Empty(text.to_string()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(DestinationError::TooLong(text.to_string()));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DestinationError::BadCharacter(text.to_string()));
    }
    if name.split('.').any(str::is_empty) {
        return Err(DestinationError::EmptySegment(text.to_string()));
    }
    Ok((kind, name))
}

/// A concrete destination. Cheap to clone (the text is shared); `as_str` gives the full
/// `kind://name` form without allocating, which the delivery encoder relies on.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    kind: Kind,
    text: Arc<str>,
}

impl Destination {
    pub fn parse(text: &str) -> Result<Destination, DestinationError> {
        let (kind, name) = split_scheme(text)?;
        if name.split('.').any(|s| s.contains('*') || s.contains('>')) {
            return Err(DestinationError::Wildcard(text.to_string()));
        }
        Ok(Destination {
            kind,
            text: Arc::from(text),
        })
    }

    /// Builds a destination from parts already known to be valid (e.g. `DLQ.` + a queue name).
    pub fn new(kind: Kind, name: &str) -> Result<Destination, DestinationError> {
        Destination::parse(&format!("{}://{}", kind.scheme(), name))
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn name(&self) -> &str {
        &self.text[self.kind.scheme().len() + 3..]
    }

    /// The full `kind://name` text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The dead-letter queue for this destination: `queue://DLQ.<name>`.
    pub fn dead_letter_queue(&self) -> Destination {
        Destination {
            kind: Kind::Queue,
            text: Arc::from(format!("queue://DLQ.{}", self.name())),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Destination {
    type Err = DestinationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Destination::parse(s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    Literal(Box<str>),
    /// `*`: exactly one segment.
    One,
    /// `>`: one or more remaining segments (ActiveMQ: `a.>` matches `a.b` and `a.b.c`, not `a`).
    Rest,
}

/// A destination pattern with ActiveMQ wildcards; a pattern without wildcards matches exactly
/// one destination.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DestinationPattern {
    kind: Kind,
    text: Arc<str>,
    segments: Box<[Segment]>,
}

impl DestinationPattern {
    pub fn parse(text: &str) -> Result<DestinationPattern, DestinationError> {
        let (kind, name) = split_scheme(text)?;
        let raw: Vec<&str> = name.split('.').collect();
        let mut segments = Vec::with_capacity(raw.len());
        for (i, seg) in raw.iter().enumerate() {
            let s = match *seg {
                "*" => Segment::One,
                ">" if i + 1 == raw.len() => Segment::Rest,
                ">" => return Err(DestinationError::RestNotLast(text.to_string())),
                s if s.contains('*') || s.contains('>') => {
                    return Err(DestinationError::PartialWildcard(text.to_string()))
                }
                s => Segment::Literal(s.into()),
            };
            segments.push(s);
        }
        Ok(DestinationPattern {
            kind,
            text: Arc::from(text),
            segments: segments.into_boxed_slice(),
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn is_wildcard(&self) -> bool {
        self.segments
            .iter()
            .any(|s| !matches!(s, Segment::Literal(_)))
    }

    /// The single destination this pattern names, when it has no wildcard.
    pub fn as_destination(&self) -> Option<Destination> {
        if self.is_wildcard() {
            return None;
        }
        Destination::parse(&self.text).ok()
    }

    pub fn matches(&self, dest: &Destination) -> bool {
        self.kind == dest.kind && self.matches_name(dest.name())
    }

    /// Matches a name of this pattern's kind.
    pub fn matches_name(&self, name: &str) -> bool {
        let mut parts = name.split('.');
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Rest => {
                    debug_assert_eq!(i + 1, self.segments.len());
                    return parts.next().is_some();
                }
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => match parts.next() {
                    Some(p) if p == &**lit => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when every destination `other` matches, this pattern matches too.
    pub fn covers(&self, other: &DestinationPattern) -> bool {
        fn covers(a: &[Segment], b: &[Segment]) -> bool {
            match (a.first(), b.first()) {
                (None, None) => true,
                (Some(Segment::Rest), _) => !b.is_empty(),
                (_, None) | (None, _) => false,
                (Some(Segment::One), Some(Segment::One | Segment::Literal(_))) => {
                    covers(&a[1..], &b[1..])
                }
                (Some(Segment::Literal(x)), Some(Segment::Literal(y))) if x == y => {
                    covers(&a[1..], &b[1..])
                }
                _ => false,
            }
        }
        self.kind == other.kind && covers(&self.segments, &other.segments)
    }
}

impl fmt::Display for DestinationPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for DestinationPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> DestinationPattern {
        DestinationPattern::parse(s).unwrap()
    }
    fn dest(s: &str) -> Destination {
        Destination::parse(s).unwrap()
    }

    #[test]
    fn parses_every_kind_and_round_trips() {
        for s in [
            "queue://a",
            "topic://a.b.c",
            "temp-queue://ID:c1.1",
            "temp-topic://x",
        ] {
            assert_eq!(dest(s).to_string(), s);
        }
        assert_eq!(dest("queue://orders").kind(), Kind::Queue);
    }

    #[test]
    fn refuses_malformed_destinations_with_a_reason() {
        use DestinationError::*;
        type Check = fn(&DestinationError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("orders", |e| matches!(e, NoScheme(_))),
            ("fifo://a", |e| matches!(e, UnknownKind(..))),
            ("queue://", |e| matches!(e, Empty(_))),
            ("queue://a..b", |e| matches!(e, EmptySegment(_))),
            ("queue://a.", |e| matches!(e, EmptySegment(_))),
            ("queue://a b", |e| matches!(e, BadCharacter(_))),
            ("queue://a.*", |e| matches!(e, Wildcard(_))),
            ("topic://a.>", |e| matches!(e, Wildcard(_))),
        ];
        for (text, check) in cases {
            let err = Destination::parse(text).unwrap_err();
            assert!(check(&err), "{text}: {err}");
        }
        assert!(matches!(
            Destination::parse(&format!("queue://{}", "x".repeat(MAX_NAME_LEN + 1))),
            Err(TooLong(_))
        ));
    }

    #[test]
    fn wildcards_match_as_activemq() {
        let p = pat("topic://a.*.c");
        assert!(p.matches(&dest("topic://a.b.c")));
        assert!(!p.matches(&dest("topic://a.b.c.d")));
        assert!(!p.matches(&dest("topic://a.c")));
        assert!(!p.matches(&dest("queue://a.b.c")));

        let rest = pat("topic://a.>");
        assert!(rest.matches(&dest("topic://a.b")));
        assert!(rest.matches(&dest("topic://a.b.c.d")));
        assert!(!rest.matches(&dest("topic://a")));
        assert!(!rest.matches(&dest("topic://b.a")));

        assert!(pat("topic://>").matches(&dest("topic://anything.at.all")));
        assert!(pat("queue://x").matches(&dest("queue://x")));
        assert!(!pat("queue://x").matches(&dest("queue://x.y")));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        assert!(matches!(
            DestinationPattern::parse("topic://a.>.b"),
            Err(DestinationError::RestNotLast(_))
        ));
        assert!(matches!(
            DestinationPattern::parse("topic://a.b*"),
            Err(DestinationError::PartialWildcard(_))
        ));
    }

    #[test]
    fn coverage_of_one_pattern_by_another() {
        let covers = |a: &str, b: &str| pat(a).covers(&pat(b));
        assert!(covers("topic://a.>", "topic://a.b.*"));
        assert!(covers("topic://a.>", "topic://a.>"));
        assert!(covers("topic://>", "topic://x.>"));
        assert!(covers("topic://a.*.c", "topic://a.b.c"));
        assert!(covers("topic://a.*", "topic://a.*"));
        assert!(
            !covers("topic://a.*", "topic://a.>"),
            "> reaches deeper than *"
        );
        assert!(!covers("topic://a.b.>", "topic://a.>"));
        assert!(!covers("topic://a.b", "topic://a.*"));
        assert!(!covers("queue://>", "topic://a"));
    }

    #[test]
    fn dead_letter_queue_name() {
        assert_eq!(
            dest("queue://orders.eu").dead_letter_queue().to_string(),
            "queue://DLQ.orders.eu"
        );
    }
}
