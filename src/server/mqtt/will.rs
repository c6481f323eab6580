//! The will of a connection: the PUBLISH its CONNECT names, kept as a send and published
//! through the same pipeline as any when the connection ends without a DISCONNECT (or with
//! MQTT 5's "disconnect with will"). Owns: the kept will. Must not touch: the socket.

use rmqtt_codec::types::Publish;

use super::super::request::SendRequest;
use super::Mqtt;

impl Mqtt {
    /// Keeps the will of the CONNECT (its topic was checked before the CONNACK).
    pub(super) fn set_will(&mut self, will: Publish) {
        match self.draft_of(&will) {
            Ok((destination, draft)) => {
                self.will = Some(SendRequest {
                    destination,
                    draft,
                    transaction: None,
                    receipt: None,
                })
            }
            Err((_, e)) => {
                tracing::debug!(connection = %self.connection_id, error = %e, "will refused")
            }
        }
    }
}
