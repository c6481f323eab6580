"""paho-mqtt against a listener with `max_connections = MAX`: MAX clients (MQTT 3.1.1 and 5 in
turn) connect and subscribe, one more client of each version is refused, and then every
admitted client still gets what it publishes to its own topic. Prints one JSON object.

usage: paho_limit.py PORT MAX

  refused: {"3.1.1": [reason name, value], "5": [...]}: the extra clients' CONNACK (paho gives
           an MQTT 3 return code as the MQTT 5 reason of the same name); null: no CONNACK
  echoed:  the admitted clients whose own message came back"""

import json
import sys
import threading

import paho.mqtt.client as mqtt

HOST = "127.0.0.1"
GUARD = 30.0
REFUSAL_WAIT = 10.0

port, limit = int(sys.argv[1]), int(sys.argv[2])
VERSIONS = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def client(name, version):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=VERSIONS[version])
    state = {"connacked": threading.Event(), "subscribed": threading.Event(),
             "got": threading.Event(), "reason": None}

    def on_connect(c, userdata, flags, reason, props):
        state["reason"] = [reason.getName(), reason.value]
        state["connacked"].set()

    def on_subscribe(c, userdata, mid, reasons, props):
        state["subscribed"].set()

    def on_message(c, userdata, msg):
        if msg.payload.decode() == name:
            state["got"].set()

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect(HOST, port, keepalive=30)
    c.loop_start()
    return c, state


held = []
for i in range(limit):
    version = "3.1.1" if i % 2 == 0 else "5"
    name = f"held-{i}"
    c, state = client(name, version)
    if not state["connacked"].wait(GUARD) or state["reason"][1] != 0:
        fail(f"{name}: not admitted: {state['reason']}")
    c.subscribe(f"limit/{name}", qos=1)
    if not state["subscribed"].wait(GUARD):
        fail(f"{name}: no SUBACK")
    held.append((name, c, state))

refused = {}
for version in VERSIONS:
    c, state = client(f"extra-{version}", version)
    state["connacked"].wait(REFUSAL_WAIT)
    refused[version] = state["reason"]
    c.loop_stop()
    try:
        c.disconnect()
    except Exception:
        pass

echoed = []
for name, c, state in held:
    info = c.publish(f"limit/{name}", name, qos=1)
    info.wait_for_publish(GUARD)
    if state["got"].wait(GUARD):
        echoed.append(name)
for _, c, _ in held:
    c.disconnect()
    c.loop_stop()
print(json.dumps({"refused": refused, "echoed": echoed}))
