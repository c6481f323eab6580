//! ActiveMQ's STOMP destination names ↔ meshmq destinations:
//! `/queue/x` ↔ `queue://x`, `/topic/x` ↔ `topic://x`, `/temp-queue/x` ↔ `temp-queue://x`,
//! `/temp-topic/x` ↔ `temp-topic://x`. The name after the prefix is kept as it is (dots
//! separate segments; `*` and `>` are wildcards where a pattern is allowed). Scoping temp
//! destinations to their connection is the server's business, not this mapping's.

use crate::destination::{Destination, DestinationPattern, Kind};

use super::{quote, StompError};

/// The prefixes STOMP clients write, with the kind each names.
pub const STOMP_PREFIXES: [(&str, Kind); 4] = [
    ("/queue/", Kind::Queue),
    ("/topic/", Kind::Topic),
    ("/temp-queue/", Kind::TempQueue),
    ("/temp-topic/", Kind::TempTopic),
];

const ACCEPTED: &str = "write /queue/NAME, /topic/NAME, /temp-queue/NAME or /temp-topic/NAME";

fn split(given: &str) -> Result<(Kind, &str), StompError> {
    STOMP_PREFIXES
        .iter()
        .find_map(|(prefix, kind)| given.strip_prefix(prefix).map(|name| (*kind, name)))
        .ok_or_else(|| StompError::BadDestination {
            given: quote(given.as_bytes()),
            reason: ACCEPTED.to_string(),
        })
}

fn native(kind: Kind, name: &str) -> String {
    format!("{}://{}", kind.scheme(), name)
}

/// A SEND's `destination` header → the destination (wildcards refused).
pub fn from_stomp_destination(given: &str) -> Result<Destination, StompError> {
    let (kind, name) = split(given)?;
    Destination::parse(&native(kind, name)).map_err(|e| StompError::BadDestination {
        given: quote(given.as_bytes()),
        reason: e.to_string(),
    })
}

/// A SUBSCRIBE's `destination` header → the pattern it subscribes to (wildcards allowed).
pub fn from_stomp_pattern(given: &str) -> Result<DestinationPattern, StompError> {
    let (kind, name) = split(given)?;
    DestinationPattern::parse(&native(kind, name)).map_err(|e| StompError::BadDestination {
        given: quote(given.as_bytes()),
        reason: e.to_string(),
    })
}

/// A destination as STOMP clients name it, for MESSAGE's `destination` header.
pub fn to_stomp_destination(dest: &Destination) -> String {
    let prefix = match dest.kind() {
        Kind::Queue => "/queue/",
        Kind::Topic => "/topic/",
        Kind::TempQueue => "/temp-queue/",
        Kind::TempTopic => "/temp-topic/",
    };
    let mut out = String::with_capacity(prefix.len() + dest.name().len());
    out.push_str(prefix);
    out.push_str(dest.name());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prefix_maps_both_ways() {
        for (stomp, native) in [
            ("/queue/orders.eu", "queue://orders.eu"),
            ("/topic/prices", "topic://prices"),
            ("/temp-queue/c1.reply", "temp-queue://c1.reply"),
            ("/temp-topic/t", "temp-topic://t"),
        ] {
            let dest = from_stomp_destination(stomp).unwrap();
            assert_eq!(dest.as_str(), native);
            assert_eq!(to_stomp_destination(&dest), stomp);
        }
    }

    #[test]
    fn patterns_keep_their_wildcards() {
        let pattern = from_stomp_pattern("/topic/prices.>").unwrap();
        assert_eq!(pattern.as_str(), "topic://prices.>");
        assert!(pattern.matches(&Destination::parse("topic://prices.eu.gold").unwrap()));
        assert_eq!(
            from_stomp_pattern("/queue/a.*").unwrap().as_str(),
            "queue://a.*"
        );
    }

    #[test]
    fn other_forms_are_refused_naming_the_accepted_ones() {
        for given in ["queue://orders", "orders", "/queues/orders", "/queue", ""] {
            let err = from_stomp_destination(given).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("destination \"{given}\": {ACCEPTED}"),
                "{given}"
            );
        }
    }

    #[test]
    fn bad_names_carry_the_destination_rule() {
        let err = from_stomp_destination("/queue/").unwrap_err().to_string();
        assert!(err.contains("empty name"), "{err}");
        let err = from_stomp_destination("/queue/a.*")
            .unwrap_err()
            .to_string();
        assert!(err.contains("wildcard"), "{err}");
        let err = from_stomp_pattern("/topic/a.>.b").unwrap_err().to_string();
        assert!(err.contains("'>' matches the rest"), "{err}");
    }
}
