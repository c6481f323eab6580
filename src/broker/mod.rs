//! The broker core: destinations, subscriptions, dispatch, acknowledgements, redelivery,
//! dead-lettering and producer flow control. It owns no sockets and spawns no tasks.
pub mod destination;
