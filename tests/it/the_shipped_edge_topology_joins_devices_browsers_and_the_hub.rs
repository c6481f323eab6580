//! Property: `topologies/edge.toml`, as shipped (ports moved, the tests' mesh secret), joins
//! devices, browsers and the back end: what a device publishes over MQTT on edge-1
//! (`mosquitto_pub`) reaches a WebSocket MQTT client on edge-2 (paho over `ws://`) and a native
//! consumer of the matching meshmq topic on the hub; what the hub sends to a topic reaches an
//! MQTT subscriber on edge-1 (`mosquitto_sub`). Each message crosses the connectors once.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::mesh::Mesh;
use common::script::Script;
use meshmq::client::{Client, ClientOptions, Outgoing, SubscribeOptions};

/// paho-mqtt over WebSocket: subscribes to `filter`, prints "ready", then prints each message
/// as `topic payload` until `count` have come (or 20 s pass).
const PAHO_WS: &str = r#"
import sys, time, threading
import paho.mqtt.client as mqtt
host, port, filt, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
done = threading.Event()
got = []
def on_message(c, u, m):
    got.append(m)
    print(m.topic, m.payload.decode(), flush=True)
    if len(got) >= count:
        done.set()
subscribed = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="browser-1", transport="websockets")
c.on_message = on_message
c.on_subscribe = lambda *a: subscribed.set()
c.connect(host, port)
c.loop_start()
c.subscribe(filt, qos=1)
if not subscribed.wait(10):
    sys.exit("no SUBACK")
print("ready", flush=True)
done.wait(20)
c.loop_stop()
"#;

fn read_line(out: &mut impl std::io::BufRead) -> String {
    let mut line = String::new();
    out.read_line(&mut line).expect("read a line");
    line.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_a_browser_and_the_hub_reach_each_other_through_the_edges() {
    let mut mesh = Mesh::from_shipped("edge.toml");
    mesh.start_all();
    mesh.wait_until("both connectors are up", |m| {
        m.member("hub")
            .status()
            .is_some_and(|s| s.connectors.len() == 2 && s.connectors.iter().all(|c| c.up))
    });
    let edge1_mqtt = mesh.member("edge-1").mqtt.expect("edge-1 serves MQTT");
    let edge2_ws = mesh.member("edge-2").ws.expect("edge-2 serves WebSocket");

    // The back end on the hub: a native consumer of every sensor's temperature.
    let hub = Client::connect(&mesh.member("hub").url(), ClientOptions::default())
        .await
        .expect("connect to the hub");
    let mut on_hub = hub
        .subscribe("topic://sensors.*.temp", SubscribeOptions::default())
        .await
        .expect("subscribe on the hub");

    // A browser on edge-2: MQTT over WebSocket.
    // Its own process group: it ends with the test even when the test fails.
    let mut browser = Script::spawn(
        Command::new("python3")
            .args([
                "-c",
                PAHO_WS,
                &edge2_ws.ip().to_string(),
                &edge2_ws.port().to_string(),
                "sensors/+/temp",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    )
    .expect("run python3 with paho-mqtt (make test-deps installs it)");
    let mut browser_out = std::io::BufReader::new(browser.child.stdout.take().expect("stdout"));
    assert_eq!(
        read_line(&mut browser_out),
        "ready",
        "the browser subscribed"
    );
    // Demand travels edge-2 -> hub -> edge-1 before the device publishes.
    mesh.wait_until("edge-1 sees demand from the hub", |m| {
        m.member("edge-1")
            .status()
            .is_some_and(|s| s.connectors.iter().any(|c| c.remote_demand > 0))
    });

    // A device on edge-1.
    let published = Command::new("mosquitto_pub")
        .args([
            "-h",
            &edge1_mqtt.ip().to_string(),
            "-p",
            &edge1_mqtt.port().to_string(),
        ])
        .args([
            "-t",
            "sensors/a/temp",
            "-q",
            "1",
            "-m",
            "21.5",
            "-i",
            "device-a",
        ])
        .status()
        .expect("run mosquitto_pub (make test-deps installs mosquitto-clients)");
    assert!(published.success(), "mosquitto_pub failed");

    let at_hub = tokio::time::timeout(Duration::from_secs(10), on_hub.next())
        .await
        .expect("the hub's consumer got the device's message within 10 s")
        .expect("a delivery");
    assert_eq!(at_hub.destination, "topic://sensors.a.temp");
    assert_eq!(&at_hub.body[..], b"21.5");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut browser_out, &mut rest).expect("the browser's output");
    let status = browser.wait_timeout(common::GUARD);
    assert!(
        status.is_some_and(|s| s.success()),
        "the browser's script ended cleanly: {status:?}"
    );
    let left = browser.end();
    assert!(left.is_empty(), "the browser's script left behind {left:?}");
    assert_eq!(
        rest.trim(),
        "sensors/a/temp 21.5",
        "the browser on edge-2 got the device's message, once"
    );

    // And back: the hub sends to a topic a device on edge-1 subscribes to over MQTT.
    let device = Command::new("mosquitto_sub")
        .args([
            "-h",
            &edge1_mqtt.ip().to_string(),
            "-p",
            &edge1_mqtt.port().to_string(),
        ])
        .args([
            "-t", "alerts/#", "-q", "1", "-v", "-C", "1", "-W", "20", "-i", "device-b",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run mosquitto_sub");
    mesh.wait_until("the hub sees edge-1's demand for alerts", |m| {
        m.member("hub").status().is_some_and(|s| {
            s.connectors
                .iter()
                .any(|c| c.peer.contains("edge-1") && c.remote_demand > 0)
        })
    });
    hub.send_with_receipt("topic://alerts.fire", &Outgoing::new(&b"evacuate"[..]))
        .await
        .expect("send on the hub");
    let out = device.wait_with_output().expect("mosquitto_sub ends");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "alerts/fire evacuate",
        "the device on edge-1 got the hub's alert"
    );
}
