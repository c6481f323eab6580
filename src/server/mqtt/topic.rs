//! MQTT topic names and filters as meshmq destinations, the way ActiveMQ maps them: `/` ↔ `.`,
//! `+` ↔ `*`, `#` ↔ `>`, and a `.` inside an MQTT level becomes `/`, so the mapping is one to
//! one. Owns: the mapping both ways, and the topic a delivery goes out on (a share group's
//! copy names the topic it was published to). Must not touch: the connection, the broker.
//! Invariant: a topic name with a wildcard, or with meshmq's own `*`/`>`, is refused.

use crate::broker::{Destination, DestinationPattern, Kind, Message};

use super::super::mqtt_share::SHARE_TOPIC_HEADER;

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
