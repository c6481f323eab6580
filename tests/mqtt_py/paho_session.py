"""paho-mqtt against meshmq, one step of a persistent-session scenario per run (the Rust test
restarts and kills brokers between the steps). Prints one JSON object.

usage: paho_session.py PORT VERSION(3.1.1|5) ACTION CLIENT_ID [ARG...] [--expiry SECONDS]

  subscribe CID FILTER    connect with a kept session, subscribe FILTER at QoS 1, disconnect
  unsubscribe CID FILTER  connect with a kept session, unsubscribe FILTER, disconnect
  publish   CID TOPIC PREFIX N
                          publish PREFIX-0 … PREFIX-(N-1) at QoS 1, each waiting for its PUBACK
  receive   CID N         connect with a kept session (subscribing to nothing), take what comes
                          until N messages arrived and then 1 s of quiet, disconnect
  take      CID K         like receive, but acknowledge none of the first K messages and
                          disconnect right after them (they stay unacknowledged)
  clean     CID           connect with a clean session, disconnect

--expiry: MQTT 5's session expiry interval of the connection (default 3600).
--subscribe FILTER: receive/take subscribe FILTER at QoS 1 first (after the CONNACK)."""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST = "127.0.0.1"
GUARD = 30.0
QUIET = 1.0

args = sys.argv[1:]
expiry = 3600
if "--expiry" in args:
    i = args.index("--expiry")
    expiry = int(args[i + 1])
    del args[i:i + 2]
subscribe_first = None
if "--subscribe" in args:
    i = args.index("--subscribe")
    subscribe_first = args[i + 1]
    del args[i:i + 2]
port, version, action, cid = int(args[0]), args[1], args[2], args[3]
rest = args[4:]
v5 = version == "5"


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def connect(clean, manual_ack=False):
    kwargs = {} if v5 else {"clean_session": clean}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                    manual_ack=manual_ack, **kwargs)
    state = {"connected": threading.Event(), "subscribed": threading.Event(), "messages": []}
    cond = threading.Condition()

    def on_connect(c, userdata, flags, reason, props):
        state["reason"] = reason.value
        state["session_present"] = bool(flags.session_present)
        state["connected"].set()

    def on_subscribe(c, userdata, mid, reasons, props):
        state["granted"] = [r.value for r in reasons]
        state["subscribed"].set()

    def on_message(c, userdata, msg):
        with cond:
            state["messages"].append({"payload": msg.payload.decode(), "topic": msg.topic,
                                      "qos": msg.qos, "dup": bool(msg.dup), "mid": msg.mid})
            cond.notify_all()

    def on_unsubscribe(c, userdata, mid, reasons, props):
        state["unsubscribed"].set()

    state["unsubscribed"] = threading.Event()
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.on_unsubscribe = on_unsubscribe
    if v5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0 if clean else expiry
        c.connect(HOST, port, keepalive=30, clean_start=clean, properties=props)
    else:
        c.connect(HOST, port, keepalive=30)
    c.loop_start()
    if not state["connected"].wait(GUARD):
        fail(f"{cid}: no CONNACK")
    if state["reason"] != 0:
        fail(f"{cid}: CONNACK refused with {state['reason']}")
    return c, state, cond


def done(c, result):
    c.disconnect()
    c.loop_stop()
    print(json.dumps(result))


if action == "subscribe":
    c, state, _ = connect(clean=False)
    c.subscribe(rest[0], qos=1)
    if not state["subscribed"].wait(GUARD):
        fail("no SUBACK")
    done(c, {"session_present": state["session_present"], "granted": state["granted"]})
elif action == "unsubscribe":
    c, state, _ = connect(clean=False)
    c.unsubscribe(rest[0])
    if not state["unsubscribed"].wait(GUARD):
        fail("no UNSUBACK")
    done(c, {"session_present": state["session_present"]})
elif action == "publish":
    c, state, _ = connect(clean=True)
    topic, prefix, n = rest[0], rest[1], int(rest[2])
    for i in range(n):
        info = c.publish(topic, f"{prefix}-{i}", qos=1)
        info.wait_for_publish(GUARD)
        if not info.is_published():
            fail(f"{prefix}-{i} was not acknowledged")
    done(c, {"pubacked": n})
elif action in ("receive", "take"):
    n = int(rest[0])
    c, state, cond = connect(clean=False, manual_ack=(action == "take"))
    if subscribe_first is not None:
        c.subscribe(subscribe_first, qos=1)
        if not state["subscribed"].wait(GUARD):
            fail("no SUBACK")
    with cond:
        if not cond.wait_for(lambda: len(state["messages"]) >= n, GUARD):
            fail(f"only {len(state['messages'])} of {n} messages arrived: {state['messages']}")
    if action == "receive":
        # Anything beyond N would be a message delivered twice or one that should be gone.
        time.sleep(QUIET)
    with cond:
        messages = list(state["messages"] if action == "receive" else state["messages"][:n])
    done(c, {"session_present": state["session_present"],
             "messages": [m["payload"] for m in messages],
             "dups": [m["payload"] for m in messages if m["dup"]],
             "topics": sorted({m["topic"] for m in messages}),
             "qos": sorted({m["qos"] for m in messages})})
elif action == "clean":
    c, state, _ = connect(clean=True)
    done(c, {"session_present": state["session_present"]})
else:
    fail(f"unknown action {action}")
