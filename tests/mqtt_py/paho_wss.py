"""paho-mqtt over `wss://` (WebSocket, subprotocol mqtt, inside TLS) or, with TRANSPORT tcp, over
`mqtt+ssl://`: a client that trusts the CA `meshmq certs` made subscribes and publishes QoS 1
through the broker, in MQTT 3.1.1 and 5; a client that trusts only the system's CAs fails its
TLS handshake. Prints one JSON object.

usage: paho_wss.py PORT CA_PEM N [TRANSPORT(websockets|tcp)]"""

import json
import ssl
import sys
import threading

import paho.mqtt.client as mqtt

HOST = "127.0.0.1"
GUARD = 30.0

port, ca, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
transport = sys.argv[4] if len(sys.argv) > 4 else "websockets"


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def run(protocol, tag):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"wss-{tag}",
                    transport=transport, protocol=protocol)
    c.tls_set(ca_certs=ca)
    state = {"connected": threading.Event(), "subscribed": threading.Event(), "got": []}
    cond = threading.Condition()

    def on_connect(c, userdata, flags, reason, props):
        state["reason"] = reason.value
        state["connected"].set()

    def on_subscribe(c, userdata, mid, reasons, props):
        state["subscribed"].set()

    def on_message(c, userdata, msg):
        with cond:
            state["got"].append(msg.payload.decode())
            cond.notify_all()

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect(HOST, port, keepalive=30)
    c.loop_start()
    if not state["connected"].wait(GUARD) or state["reason"] != 0:
        fail(f"{tag}: not connected over TLS ({transport})")
    c.subscribe(f"secure/{tag}", qos=1)
    if not state["subscribed"].wait(GUARD):
        fail(f"{tag}: no SUBACK")
    for i in range(n):
        info = c.publish(f"secure/{tag}", f"s{i}", qos=1)
        info.wait_for_publish(GUARD)
    with cond:
        cond.wait_for(lambda: len(state["got"]) >= n, GUARD)
    c.disconnect()
    c.loop_stop()
    return state["got"]


result = {"311": run(mqtt.MQTTv311, "311"), "5": run(mqtt.MQTTv5, "5")}

# A client trusting only the system's CAs.
stranger = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="wss-stranger",
                       transport=transport, protocol=mqtt.MQTTv311)
stranger.tls_set()
try:
    stranger.connect(HOST, port, keepalive=30)
    result["stranger"] = "connected"
except ssl.SSLError as e:
    result["stranger"] = "refused: " + e.reason if e.reason else "refused"
except OSError as e:
    result["stranger"] = "refused: " + str(e)
print(json.dumps(result))
