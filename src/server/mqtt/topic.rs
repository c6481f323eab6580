//! MQTT topic names and filters as meshmq destinations, the way ActiveMQ maps them: `/` ↔ `.`,
//! `+` ↔ `*`, `#` ↔ `>`, and a `.` inside an MQTT level becomes `/`, so the mapping is one to
//! one. Owns: the mapping both ways, the topic a delivery goes out on (a share group's copy
//! names the topic it was published to), and the names of share groups' queues
//! (`$share/NAME/filter` ↔ `queue://$share.NAME.F` and the topics it is fed from). Must not
//! touch: the connection, the broker.
//! Invariant: a topic name with a wildcard, or with meshmq's own `*`/`>`, is refused.

use crate::broker::{Destination, DestinationPattern, Kind, Message};

/// Why a topic name or filter cannot be used here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TopicError {
    #[error("the topic name {0:?} contains a wildcard (+ or #): a PUBLISH names one topic")]
    Wildcard(String),
    #[error("the topic filter {0:?} uses + or # inside a level: each stands alone between slashes, and # only last")]
    BadFilter(String),
    #[error("the topic {0:?} contains * or >, which are meshmq wildcards: use another character")]
    MeshmqWildcard(String),
    #[error("the topic {0:?} cannot be a meshmq topic: {1}")]
    Destination(String, String),
}

/// Turns one MQTT level into a meshmq segment (`.` inside a level becomes `/`).
pub(super) fn level_to_segment(level: &str) -> String {
    level.replace('.', "/")
}

/// An MQTT topic name (no wildcards) → the meshmq topic it stands for.
pub(crate) fn topic_to_destination(topic: &str) -> Result<Destination, TopicError> {
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard(topic.to_string()));
    }
    if topic.contains(['*', '>']) {
        return Err(TopicError::MeshmqWildcard(topic.to_string()));
    }
    let name: Vec<String> = topic.split('/').map(level_to_segment).collect();
    Destination::new(Kind::Topic, &name.join("."))
        .map_err(|e| TopicError::Destination(topic.to_string(), e.to_string()))
}

/// An MQTT topic filter → the meshmq topic pattern that matches the same topics (`#` matches
/// one or more levels, as ActiveMQ's `>` does: `a/#` does not match `a` itself).
pub(crate) fn filter_to_pattern(filter: &str) -> Result<DestinationPattern, TopicError> {
    if filter.contains(['*', '>']) {
        return Err(TopicError::MeshmqWildcard(filter.to_string()));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let mut segments = Vec::with_capacity(levels.len());
    for (i, level) in levels.iter().enumerate() {
        segments.push(match *level {
            "+" => "*".to_string(),
            "#" if i + 1 == levels.len() => ">".to_string(),
            l if l.contains(['+', '#']) => return Err(TopicError::BadFilter(filter.to_string())),
            l => level_to_segment(l),
        });
    }
    DestinationPattern::parse(&format!("topic://{}", segments.join(".")))
        .map_err(|e| TopicError::Destination(filter.to_string(), e.to_string()))
}

/// A meshmq destination → the MQTT topic name its messages arrive on.
pub(crate) fn destination_to_topic(dest: &Destination) -> String {
    dest.name()
        .split('.')
        .map(|segment| segment.replace('/', "."))
        .collect::<Vec<_>>()
        .join("/")
}

/// The MQTT topic a message is delivered on: its topic's — or, for a share group's copy, the
/// topic it was published to.
pub(super) fn message_topic(m: &Message) -> String {
    let shared = m
        .headers
        .iter()
        .find(|(k, _)| k == SHARE_TOPIC_HEADER)
        .and_then(|(_, v)| Destination::parse(v).ok());
    shared
        .as_ref()
        .or(m.destination.as_ref())
        .map(destination_to_topic)
        .unwrap_or_default()
}

/// Names the queues of share groups (`queue://$share.…`).
const SHARE_QUEUE_PREFIX: &str = "$share.";

/// The header that carries the topic a share group's copy was published to.
pub(crate) const SHARE_TOPIC_HEADER: &str = "meshmq.share-topic";

/// Why a `$share/…` filter cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ShareError {
    #[error("the shared subscription {0:?} needs $share/NAME/FILTER, NAME non-empty and free of /, + and #")]
    Malformed(String),
    #[error(transparent)]
    Filter(#[from] TopicError),
}

/// The queue of share group `$share/NAME/FILTER` (`None` when `filter` is not a shared one).
pub(crate) fn share_queue(filter: &str) -> Option<Result<Destination, ShareError>> {
    let rest = filter.strip_prefix("$share/")?;
    Some((|| {
        let (name, topic_filter) = rest
            .split_once('/')
            .ok_or_else(|| ShareError::Malformed(filter.to_string()))?;
        if name.is_empty() || name.contains(['+', '#']) || topic_filter.is_empty() {
            return Err(ShareError::Malformed(filter.to_string()));
        }
        // Checked as a filter (and its levels validated) first.
        filter_to_pattern(topic_filter)?;
        let segments: Vec<String> = std::iter::once(name)
            .chain(topic_filter.split('/'))
            .map(|level| level.replace('.', "/"))
            .collect();
        Destination::new(
            Kind::Queue,
            &format!("{SHARE_QUEUE_PREFIX}{}", segments.join(".")),
        )
        .map_err(|e| ShareError::Filter(TopicError::Destination(filter.into(), e.to_string())))
    })())
}

/// The topics share-group queue `queue` is fed from (`None` when it is not one).
pub(crate) fn fed_from(queue: &str) -> Option<DestinationPattern> {
    let name = queue
        .strip_prefix("queue://")?
        .strip_prefix(SHARE_QUEUE_PREFIX)?;
    let (_, filter) = name.split_once('.')?;
    let segments: Vec<&str> = filter
        .split('.')
        .map(|s| match s {
            "+" => "*",
            "#" => ">",
            s => s,
        })
        .collect();
    DestinationPattern::parse(&format!("topic://{}", segments.join("."))).ok()
}

#[cfg(test)]
mod share_tests {
    use super::*;

    #[test]
    fn a_share_filter_names_its_groups_queue_and_the_queue_its_topics() {
        let q = share_queue("$share/g/sensors/+/temp")
            .expect("shared")
            .expect("valid");
        assert_eq!(q.to_string(), "queue://$share.g.sensors.+.temp");
        assert_eq!(
            fed_from(q.as_str()).expect("a share queue").to_string(),
            "topic://sensors.*.temp"
        );
        let q = share_queue("$share/a.b/x.y/#")
            .expect("shared")
            .expect("valid");
        assert_eq!(q.to_string(), "queue://$share.a/b.x/y.#");
        assert_eq!(
            fed_from(q.as_str()).expect("a share queue").to_string(),
            "topic://x/y.>"
        );
        assert!(share_queue("sensors/#").is_none());
        for bad in [
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/a#",
            "$share/g/",
        ] {
            assert!(
                matches!(share_queue(bad), Some(Err(_))),
                "{bad} must be refused"
            );
        }
        assert!(fed_from("queue://orders").is_none());
    }
}
