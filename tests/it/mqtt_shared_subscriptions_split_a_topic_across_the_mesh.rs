//! MQTT shared subscriptions are competing consumers across the mesh: with one paho-mqtt
//! subscriber in `$share/g/sensors/#` on each of two edges of a hub → edges mesh and a
//! publisher on the hub, every message reaches exactly one of the two — none lost, none twice,
//! both get some, each on the topic it was published to — while a plain `sensors/#` subscriber
//! on an edge still gets every message once (its forwarded copies are not fed to the group
//! again).

use crate::common;
use crate::common_mqtt;
use crate::common_stomp;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::mesh::MeshBuilder;
use common_mqtt::wait_for;
use common_stomp::python_in;
use serde_json::Value;

/// Three single-member groups, `hub`, `edge-a` and `edge-b`, each with an MQTT listener, the
/// hub joined to each edge by a duplex connector (the harness's mesh, its connectors up).
struct Mesh {
    _mesh: common::mesh::Mesh,
    admin: [SocketAddr; 3],
    mqtt: [SocketAddr; 3],
}

impl Mesh {
    fn start() -> Mesh {
        let mut mesh = MeshBuilder::new()
            .group("hub", 1, "")
            .group("edge-a", 1, "")
            .group("edge-b", 1, "")
            .connector("hub", "edge-a", "")
            .connector("hub", "edge-b", "")
            .mqtt()
            .build();
        mesh.start_all();
        mesh.wait_connected();
        let members = ["hub", "edge-a", "edge-b"].map(|name| mesh.member(name));
        let admin = members.map(|m| m.admin);
        let mqtt = members.map(|m| m.mqtt.expect("an MQTT listener"));
        Mesh {
            _mesh: mesh,
            admin,
            mqtt,
        }
    }
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            (
                p[0].as_str().expect("topic").to_string(),
                p[1].as_str().expect("payload").to_string(),
            )
        })
        .collect()
}

#[test]
fn a_share_group_on_two_edges_takes_each_message_once_between_them() {
    let mesh = Mesh::start();
    let n = 200;
    for version in ["3.1.1", "5"] {
        // The last round's consumers are gone from the hub's view before this one starts.
        wait_for("the hub has no remote demand left", || {
            common_mqtt::remote_demand(mesh.admin[0]) == 0
        });
        let r = python_in(
            "mqtt_py",
            "paho_share.py",
            &[
                mesh.mqtt[0].port().to_string(),
                mesh.admin[0].port().to_string(),
                mesh.mqtt[1].port().to_string(),
                mesh.mqtt[2].port().to_string(),
                version.to_string(),
                n.to_string(),
            ],
        );
        let expected: BTreeSet<(String, String)> = (0..n)
            .map(|i| (format!("sensors/s{}/temp", i % 5), format!("m{i}")))
            .collect();
        let (a, b, plain) = (pairs(&r["a"]), pairs(&r["b"]), pairs(&r["plain"]));
        let mut shared: Vec<(String, String)> = a.iter().chain(b.iter()).cloned().collect();
        shared.sort();
        let once: Vec<(String, String)> = expected.iter().cloned().collect();
        assert_eq!(
            shared, once,
            "MQTT {version}: each message to exactly one member of the share group, on its topic"
        );
        assert!(
            !a.is_empty() && !b.is_empty(),
            "MQTT {version}: both edges' members take part: {} and {}",
            a.len(),
            b.len()
        );
        let mut plain_sorted = plain.clone();
        plain_sorted.sort();
        assert_eq!(
            plain_sorted, once,
            "MQTT {version}: a plain subscriber still gets every message once"
        );
    }
}
