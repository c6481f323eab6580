"""paho-mqtt against meshmq: retained messages (kept, replaced, cleared, replayed to a new
subscriber flagged retained, live copies not flagged), will messages (published when a client
vanishes or, in MQTT 5, disconnects "with will"; not after a plain DISCONNECT) and QoS 2 end to
end, in MQTT 3.1.1 or 5. Prints one JSON object of what the subscribers saw.

usage: paho_retain_will_qos2.py PORT VERSION(3.1.1|5)"""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

HOST = "127.0.0.1"
GUARD = 30.0

port = int(sys.argv[1])
v5 = sys.argv[2] == "5"
protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
tag = "5" if v5 else "311"


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


class Client:
    def __init__(self, name, will=None, start=True):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{tag}",
                             protocol=protocol)
        self.cond = threading.Condition()
        self.messages = []
        self.acks = 0
        self.connected = threading.Event()
        if will:
            self.c.will_set(*will)
        self.c.on_connect = lambda c, u, f, r, p: self.connected.set()
        self.c.on_subscribe = self._acked
        self.c.on_message = self._message
        self.c.connect(HOST, port, keepalive=30)
        if start:
            self.c.loop_start()
            if not self.connected.wait(GUARD):
                fail(f"{name}: no CONNACK")
        else:
            deadline = time.time() + GUARD
            while not self.connected.is_set():
                self.c.loop(0.1)
                if time.time() > deadline:
                    fail(f"{name}: no CONNACK")

    def _acked(self, c, u, mid, reasons, p):
        with self.cond:
            self.acks += 1
            self.cond.notify_all()

    def _message(self, c, u, msg):
        with self.cond:
            self.messages.append([msg.topic, msg.payload.decode(), msg.qos, bool(msg.retain)])
            self.cond.notify_all()

    def subscribe(self, topic, qos):
        want = self.acks + 1
        self.c.subscribe(topic, qos=qos)
        with self.cond:
            if not self.cond.wait_for(lambda: self.acks >= want, GUARD):
                fail(f"no SUBACK for {topic}")

    def wait_for(self, topic, payload):
        with self.cond:
            ok = self.cond.wait_for(
                lambda: any(m[0] == topic and m[1] == payload for m in self.messages), GUARD)
        if not ok:
            fail(f"never got {topic} {payload}: {self.messages}")

    def publish(self, topic, payload, qos, retain=False):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(GUARD)

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


pub = Client("pub")
pub.publish(f"status-{tag}/boiler", "on", 1, retain=True)
pub.publish(f"status-{tag}/pump", "running", 0, retain=True)
pub.publish(f"status-{tag}/boiler", "hot", 1, retain=True)   # replaces "on"
pub.publish(f"status-{tag}/pump", "", 1, retain=True)         # clears the pump's

late = Client("late")
late.subscribe(f"status-{tag}/#", 1)
late.wait_for(f"status-{tag}/boiler", "hot")
pub.publish(f"status-{tag}/boiler", "live", 1, retain=True)
late.wait_for(f"status-{tag}/boiler", "live")
retained_seen = list(late.messages)

watcher = Client("watcher")
watcher.subscribe(f"wills-{tag}/#", 1)
# A client that vanishes: its socket closes without a DISCONNECT.
vanishing = Client("vanishing", will=(f"wills-{tag}/vanishing", "gone", 1, False), start=False)
vanishing.c.socket().close()
watcher.wait_for(f"wills-{tag}/vanishing", "gone")
# A client that says goodbye: no will.
polite = Client("polite", will=(f"wills-{tag}/polite", "gone", 1, False))
polite.stop()
if v5:
    # MQTT 5: "disconnect with will message" publishes it all the same.
    leaving = Client("leaving", will=(f"wills-{tag}/leaving", "gone", 1, False))
    leaving.c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
    leaving.c.loop_stop()
    watcher.wait_for(f"wills-{tag}/leaving", "gone")
pub.publish(f"wills-{tag}/marker", "end", 1)
watcher.wait_for(f"wills-{tag}/marker", "end")

q2 = Client("q2")
q2.subscribe(f"exact-{tag}/#", 2)
for i in range(5):
    pub.publish(f"exact-{tag}/n", f"m{i}", 2)
q2.wait_for(f"exact-{tag}/n", "m4")
pub.publish(f"exact-{tag}/marker", "end", 2)
q2.wait_for(f"exact-{tag}/marker", "end")

for c in (pub, late, watcher, q2):
    c.stop()
print(json.dumps({"retained": retained_seen, "wills": watcher.messages,
                  "exact": q2.messages}))
