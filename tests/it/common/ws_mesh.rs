//! The mesh the browser and WebSocket tests share: a hub group and an edge group, one member
//! each on the test's own loopback addresses, with native and `ws://` listeners, joined by a
//! duplex connector — a [`MeshConfig`] like any other mesh of the harness.

use std::net::Ipv4Addr;

use super::{Mesh, MeshConfig};

/// The hub on `hub_ip` and the edge on `edge_ip`, both serving and the connector up; their
/// `ws://` listeners are [`Mesh::ws_addr`].
pub fn mesh(hub_ip: Ipv4Addr, edge_ip: Ipv4Addr) -> Mesh {
    Mesh::start(
        &MeshConfig::new()
            .group("hub")
            .at("hub", hub_ip)
            .ws("hub")
            .group("edge")
            .at("edge", edge_ip)
            .ws("edge")
            .connector("hub", "edge", &["duplex = true"]),
    )
}
