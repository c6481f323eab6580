//! The mesh the browser and WebSocket tests share: a hub group and an edge group, one member
//! each, with native and `ws://` listeners, joined by a duplex connector.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use meshmq::server::admin::MemberStatus;

use super::topology::{self, Group, Topology, QUICK_REDIAL};
use super::{free_port_on, http_get, spawn_broker, wait_until, ChildGuard};

pub struct Member {
    pub admin: SocketAddr,
    pub ws: SocketAddr,
    _proc: ChildGuard,
}

impl Member {
    pub fn status(&self) -> Option<MemberStatus> {
        match http_get(self.admin, "/status") {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }
}

/// A hub on `hub_ip` and an edge on `edge_ip`, each with a native and a `ws://` listener, joined
/// by a duplex connector, both serving and the connector up.
pub fn mesh(dir: &Path, name: &str, hub_ip: Ipv4Addr, edge_ip: Ipv4Addr) -> (Member, Member) {
    let place = |ip: Ipv4Addr| {
        (
            SocketAddr::from((ip, free_port_on(ip))),
            SocketAddr::from((ip, free_port_on(ip))),
            SocketAddr::from((ip, free_port_on(ip))),
        )
    };
    let (hub_tcp, hub_admin, hub_ws) = place(hub_ip);
    let (edge_tcp, edge_admin, edge_ws) = place(edge_ip);
    let group_of = |group: &str, tcp, admin, ws: SocketAddr| {
        Group::new(group).member(
            topology::Member::new(&format!("{group}-1"), admin)
                .data_dir(dir.join(group))
                .tcp(tcp)
                .listener(&format!("ws://{ws}"), &[]),
        )
    };
    let topology = Topology::new(name)
        .table("broker", &[])
        .group(group_of("hub", hub_tcp, hub_admin, hub_ws))
        .group(group_of("edge", edge_tcp, edge_admin, edge_ws))
        .connector(
            "hub",
            "edge",
            &["duplex = true", QUICK_REDIAL[0], QUICK_REDIAL[1]],
        )
        .write(dir, "topology.toml");
    let start = |member: &str, admin, ws| Member {
        admin,
        ws,
        _proc: spawn_broker(
            &topology,
            member,
            &dir.join(format!("{member}.log")),
            &[("MESHMQ_LOG", "info")],
        ),
    };
    let hub = start("hub-1", hub_admin, hub_ws);
    let edge = start("edge-1", edge_admin, edge_ws);
    wait_until("both members serve and the connector is up", || {
        [&hub, &edge].iter().all(|m| {
            m.status().is_some_and(|s| {
                s.ready && !s.connectors.is_empty() && s.connectors.iter().all(|c| c.up)
            })
        })
    });
    (hub, edge)
}
