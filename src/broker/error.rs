//! The broker's errors: what a session's operation can be refused for.
//!
//! Owns: [`BrokerError`], each variant's message naming the thing refused and the fix. Must not
//! touch: protocol error codes (each protocol maps these to its own replies).

use super::{DestinationError, SelectorError};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BrokerError {
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error("{0} does not exist (a temporary destination is deleted with the connection that created it)")]
    NotFound(String),
    #[error("{0} belongs to another connection: only the connection that created a temporary destination may consume from it")]
    NotOwner(String),
    #[error("subscription {0} already exists on this connection; choose another id")]
    SubscriptionExists(u64),
    #[error("no subscription {0} on this connection")]
    NoSuchSubscription(u64),
    #[error("this connection already has {0} subscriptions, the broker's max_subscriptions_per_connection")]
    TooManySubscriptions(usize),
    #[error(
        "client id {0:?} is already connected; a client id may be used by one connection at a time"
    )]
    ClientIdInUse(String),
    #[error("client id {0:?} belongs to another user: only the user who first connected with it may use it or take it over")]
    ClientIdOwned(String),
    #[error("temporary destination names under {0:?} belong to another user's connection")]
    TempPrefixOwned(String),
    #[error("a durable subscription needs a client id: set one when connecting")]
    DurableNeedsClientId,
    #[error("durable subscription {name:?} of client {client_id:?} is already active on another connection")]
    DurableInUse { client_id: String, name: String },
    #[error("durable subscriptions are for topics; {0} is a queue")]
    DurableOnQueue(String),
    #[error("{0}: wildcard subscriptions are supported on topics only; subscribe to each queue")]
    WildcardQueue(String),
    #[error(
        "the selector {selector:?} of the subscription to {destination} does not parse: {error}"
    )]
    BadSelector {
        destination: String,
        selector: String,
        error: SelectorError,
    },
    #[error("{destination} is full (memory limit reached) and its policy is on_full = \"fail\"; retry later or raise memory_limit")]
    Full { destination: String },
    #[error("{destination}: the journal is full (store_limit or disk space reached) and its policy is on_full = \"fail\"; retry once consumers have freed space, or raise store_limit or free disk space")]
    JournalFull { destination: String },
    #[error("priority {0} is out of range: use 0..=9")]
    BadPriority(u32),
    #[error("{unknown} of the acknowledged deliveries of subscription {subscription} are not in flight (already acknowledged, or returned to the queue)")]
    UnknownDelivery { subscription: u64, unknown: usize },
}
