"""paho-mqtt against meshmq: a subscriber on a wildcard filter at QoS 1 and a publisher at QoS 0
and 1 (each QoS 1 publish waits for its PUBACK), in MQTT 3.1, 3.1.1 or 5; then an unsubscribe that
stops deliveries. With MQTT 5 the publish carries user properties and a message expiry, which
must arrive with the message. Prints one JSON object of what the subscriber saw.

usage: paho_pubsub.py PORT VERSION(3.1|3.1.1|5)"""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST = "127.0.0.1"
GUARD = 30.0

port = int(sys.argv[1])
v5 = sys.argv[2] == "5"
protocol = {"3.1": mqtt.MQTTv31, "3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}[sys.argv[2]]


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def client(name):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol)
    events = {"connected": threading.Event(), "subscribed": threading.Event(),
              "unsubscribed": threading.Event(), "granted": None, "messages": []}
    cond = threading.Condition()

    def on_connect(c, userdata, flags, reason, props):
        events["connect_reason"] = reason.value
        events["connected"].set()

    def on_subscribe(c, userdata, mid, reasons, props):
        events["granted"] = [r.value for r in reasons]
        events["subscribed"].set()

    def on_unsubscribe(c, userdata, mid, reasons, props):
        events["unsubscribed"].set()

    def on_message(c, userdata, msg):
        props = {}
        if v5 and msg.properties is not None:
            if hasattr(msg.properties, "UserProperty"):
                props["user"] = [list(p) for p in msg.properties.UserProperty]
            if hasattr(msg.properties, "MessageExpiryInterval"):
                props["expiry"] = msg.properties.MessageExpiryInterval
        with cond:
            events["messages"].append({"topic": msg.topic, "payload": msg.payload.decode(),
                                       "qos": msg.qos, "props": props})
            cond.notify_all()

    c.on_connect, c.on_subscribe, c.on_unsubscribe, c.on_message = (
        on_connect, on_subscribe, on_unsubscribe, on_message)
    if v5:
        c.connect(HOST, port, keepalive=30, clean_start=True)
    else:
        c.connect(HOST, port, keepalive=30)
    c.loop_start()
    if not events["connected"].wait(GUARD):
        fail(f"{name}: no CONNACK")
    return c, events, cond


sub, sub_events, cond = client("paho-sub")
if sub_events["connect_reason"] != 0:
    fail(f"subscriber refused: {sub_events['connect_reason']}")
sub.subscribe("sensors/+/temp", qos=1)
if not sub_events["subscribed"].wait(GUARD):
    fail("no SUBACK")

pub, pub_events, _ = client("paho-pub")
props = None
if v5:
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("site", "north")]
    props.MessageExpiryInterval = 600
sent = [("sensors/a/temp", "a0", 0), ("sensors/b/temp", "b1", 1),
        ("sensors/a/humidity", "skipped", 1), ("sensors/c/temp", "c1", 1)]
pubacked = []
for topic, payload, qos in sent:
    info = pub.publish(topic, payload, qos=qos, properties=props) if v5 else \
        pub.publish(topic, payload, qos=qos)
    info.wait_for_publish(GUARD)
    pubacked.append(info.is_published())

with cond:
    cond.wait_for(lambda: len(sub_events["messages"]) >= 3, GUARD)

sub.unsubscribe("sensors/+/temp")
if not sub_events["unsubscribed"].wait(GUARD):
    fail("no UNSUBACK")
info = pub.publish("sensors/z/temp", "after-unsubscribe", qos=1)
info.wait_for_publish(GUARD)
# A marker through a second subscription shows everything before it has been delivered.
sub_events["subscribed"].clear()
sub.subscribe("marker", qos=1)
sub_events["subscribed"].wait(GUARD)
pub.publish("marker", "end", qos=1).wait_for_publish(GUARD)
with cond:
    cond.wait_for(lambda: any(m["topic"] == "marker" for m in sub_events["messages"]), GUARD)

for c in (sub, pub):
    c.disconnect()
    c.loop_stop()

print(json.dumps({"granted": sub_events["granted"], "pubacked": pubacked,
                  "messages": sub_events["messages"]}))
