"""paho-mqtt shared subscriptions across a mesh: one subscriber in `$share/g/sensors/#` on
each of two edges, a plain `sensors/#` subscriber on the first edge, and a publisher on the
hub sending N QoS 1 messages once the hub knows of the edges' demand. Prints one JSON object:
what each subscriber received, as [topic, payload] pairs.

usage: paho_share.py HUB_MQTT HUB_ADMIN EDGE_A_MQTT EDGE_B_MQTT VERSION(3.1.1|5) N"""

import json
import sys
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt

HOST = "127.0.0.1"
GUARD = 30.0
QUIET = 1.0

hub, hub_admin, edge_a, edge_b = (int(a) for a in sys.argv[1:5])
v5 = sys.argv[5] == "5"
n = int(sys.argv[6])
protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
cond = threading.Condition()


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def client(name, port):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol)
    state = {"connected": threading.Event(), "subscribed": threading.Event(), "got": []}

    def on_connect(c, userdata, flags, reason, props):
        state["reason"] = reason.value
        state["connected"].set()

    def on_subscribe(c, userdata, mid, reasons, props):
        state["granted"] = [r.value for r in reasons]
        state["subscribed"].set()

    def on_message(c, userdata, msg):
        with cond:
            state["got"].append([msg.topic, msg.payload.decode()])
            cond.notify_all()

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect(HOST, port, keepalive=30)
    c.loop_start()
    if not state["connected"].wait(GUARD) or state["reason"] != 0:
        fail(f"{name}: not connected")
    return c, state


def subscribe(c, state, name, flt):
    c.subscribe(flt, qos=1)
    if not state["subscribed"].wait(GUARD):
        fail(f"{name}: no SUBACK")
    if state["granted"] != [1]:
        fail(f"{name}: {flt} granted {state['granted']}")


def hub_demand():
    with urllib.request.urlopen(f"http://{HOST}:{hub_admin}/status", timeout=5) as r:
        status = json.load(r)
    return sum(c.get("remote_demand", 0) for c in status.get("connectors", []))


a, a_state = client("share-a", edge_a)
b, b_state = client("share-b", edge_b)
plain, plain_state = client("plain-a", edge_a)
subscribe(a, a_state, "share-a", "$share/g/sensors/#")
subscribe(b, b_state, "share-b", "$share/g/sensors/#")
subscribe(plain, plain_state, "plain-a", "sensors/#")
deadline = time.time() + GUARD
# Three consumers' demand: the two share subscribers (one queue each edge) and the plain one.
while hub_demand() < 3:
    if time.time() > deadline:
        fail(f"the hub learnt of {hub_demand()} consumers, not 3")
    time.sleep(0.05)

pub, _ = client("publisher", hub)
for i in range(n):
    info = pub.publish(f"sensors/s{i % 5}/temp", f"m{i}", qos=1)
    info.wait_for_publish(GUARD)
    if not info.is_published():
        fail(f"m{i} was not acknowledged")

with cond:
    done = cond.wait_for(lambda: len(a_state["got"]) + len(b_state["got"]) >= n
                         and len(plain_state["got"]) >= n, GUARD)
if not done:
    fail(f"share-a {len(a_state['got'])} + share-b {len(b_state['got'])} of {n}, "
         f"plain {len(plain_state['got'])}")
# Anything more would be a message delivered twice.
time.sleep(QUIET)
for c in (a, b, plain, pub):
    c.disconnect()
    c.loop_stop()
with cond:
    print(json.dumps({"a": a_state["got"], "b": b_state["got"], "plain": plain_state["got"]}))
