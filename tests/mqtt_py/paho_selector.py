"""paho-mqtt MQTT 5 subscribers with JMS selectors (a `selector` user property on SUBSCRIBE),
fed by a STOMP producer (stomp.py, a `kind` header, persistent sends) and an MQTT 5 producer (paho, a `kind`
user property). Prints one JSON object: each subscriber's SUBACK reason codes and reason
string, and what it received as [topic, payload, kind] triples.

usage: paho_selector.py PLAN_JSON

PLAN_JSON:
  {"subscribers": [{"name": N, "port": P, "filter": F, "selector": S or null,
                    "client_id": C (optional), "session": true (optional: a kept session,
                    left connected until the end)}],
   "demand": {"admin": PORT, "at_least": K} (optional: wait until the broker on PORT knows of
             K remote consumers before producing),
   "stomp": {"port": P, "messages": [[DESTINATION, BODY, KIND], ...]} (optional),
   "mqtt": {"port": P, "messages": [[TOPIC, PAYLOAD, KIND], ...]} (optional),
   "expect": N (messages all subscribers together must get; then 1 s of quiet)}"""

import json
import sys
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import stomp
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST = "127.0.0.1"
GUARD = 30.0
QUIET = 1.0

plan = json.loads(sys.argv[1])
cond = threading.Condition()


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def kind_of(props):
    for k, v in getattr(props, "UserProperty", None) or []:
        if k == "kind":
            return v
    return None


def client(name, port, client_id=None, session=False):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or name,
                    protocol=mqtt.MQTTv5)
    state = {"connected": threading.Event(), "subscribed": threading.Event(), "got": []}

    def on_connect(c, userdata, flags, reason, props):
        state["reason"] = reason.value
        state["connected"].set()

    def on_subscribe(c, userdata, mid, reasons, props):
        state["granted"] = [r.value for r in reasons]
        state["why"] = getattr(props, "ReasonString", None)
        state["subscribed"].set()

    def on_message(c, userdata, msg):
        with cond:
            state["got"].append([msg.topic, msg.payload.decode(), kind_of(msg.properties)])
            cond.notify_all()

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600 if session else 0
    c.connect(HOST, port, keepalive=30, clean_start=not session, properties=props)
    c.loop_start()
    if not state["connected"].wait(GUARD) or state["reason"] != 0:
        fail(f"{name}: not connected")
    return c, state


def hub_demand(admin):
    with urllib.request.urlopen(f"http://{HOST}:{admin}/status", timeout=5) as r:
        status = json.load(r)
    return sum(c.get("remote_demand", 0) for c in status.get("connectors", []))


class Receipts(stomp.ConnectionListener):
    def __init__(self):
        self.got = set()
        self.errors = []
        self.cond = threading.Condition()

    def on_receipt(self, frame):
        with self.cond:
            self.got.add(frame.headers.get("receipt-id"))
            self.cond.notify_all()

    def on_error(self, frame):
        with self.cond:
            self.errors.append(frame.headers.get("message", ""))
            self.cond.notify_all()


subs = []
for s in plan["subscribers"]:
    c, state = client(s["name"], s["port"], s.get("client_id"), s.get("session", False))
    props = Properties(PacketTypes.SUBSCRIBE)
    if s.get("selector") is not None:
        props.UserProperty = ("selector", s["selector"])
    c.subscribe(s["filter"], qos=1, properties=props)
    if not state["subscribed"].wait(GUARD):
        fail(f"{s['name']}: no SUBACK")
    subs.append((s["name"], c, state))

if "demand" in plan:
    deadline = time.time() + GUARD
    while hub_demand(plan["demand"]["admin"]) < plan["demand"]["at_least"]:
        if time.time() > deadline:
            fail(f"the hub learnt of {hub_demand(plan['demand']['admin'])} consumers")
        time.sleep(0.05)

if "stomp" in plan:
    conn = stomp.Connection12([(HOST, plan["stomp"]["port"])])
    receipts = Receipts()
    conn.set_listener("r", receipts)
    conn.connect(wait=True)
    for i, (dest, body, kind) in enumerate(plan["stomp"]["messages"]):
        # Persistent, as a QoS 1 publish is: kept across a restart for a persistent session.
        conn.send(dest, body, headers={"kind": kind, "persistent": "true"}, receipt=f"s{i}")
    with receipts.cond:
        if not receipts.cond.wait_for(
                lambda: receipts.errors or len(receipts.got) == len(plan["stomp"]["messages"]),
                GUARD) or receipts.errors:
            fail(f"STOMP sends not receipted: {receipts.errors}")
    conn.disconnect()

if "mqtt" in plan:
    pub, _ = client("selector-publisher", plan["mqtt"]["port"])
    for topic, payload, kind in plan["mqtt"]["messages"]:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = ("kind", kind)
        info = pub.publish(topic, payload, qos=1, properties=props)
        info.wait_for_publish(GUARD)
        if not info.is_published():
            fail(f"{payload} was not acknowledged")
    pub.disconnect()
    pub.loop_stop()

with cond:
    if not cond.wait_for(lambda: sum(len(st["got"]) for _, _, st in subs) >= plan["expect"],
                         GUARD):
        fail(f"only {[(n, st['got']) for n, _, st in subs]} of {plan['expect']} arrived")
# Anything more would be a message the selectors should have kept away, or a duplicate.
time.sleep(QUIET)
for _, c, _ in subs:
    c.disconnect()
    c.loop_stop()
with cond:
    print(json.dumps({
        "granted": {n: st["granted"] for n, _, st in subs},
        "why": {n: st["why"] for n, _, st in subs},
        "got": {n: st["got"] for n, _, st in subs},
    }))
