//! The mesh the browser and WebSocket tests share: a hub group and an edge group, one member
//! each, with native and `ws://` listeners, joined by a duplex connector.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use meshmq::server::admin::MemberStatus;

use super::{free_port_on, http_get, mesh_table, spawn_broker, wait_until, write_file, ChildGuard};

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
    let mut text = mesh_table(name) + "\n[broker]\n";
    for (group, tcp, admin, ws) in [
        ("hub", hub_tcp, hub_admin, hub_ws),
        ("edge", edge_tcp, edge_admin, edge_ws),
    ] {
        text.push_str(&format!(
            "\n[[group]]\nname = \"{group}\"\n[[group.member]]\nname = \"{group}-1\"\nadmin = \"{admin}\"\n\
             data_dir = \"{}\"\n[[group.member.listener]]\nurl = \"tcp://{tcp}\"\n\
             [[group.member.listener]]\nurl = \"ws://{ws}\"\n",
            dir.join(group).display()
        ));
    }
    text.push_str(
        "\n[[connector]]\nfrom = \"hub\"\nto = \"edge\"\nduplex = true\n\
         reconnect_initial_delay = \"100ms\"\nreconnect_max_delay = \"1s\"\n",
    );
    let topology = write_file(dir, "topology.toml", &text);
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
