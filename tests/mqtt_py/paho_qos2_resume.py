"""A paho-mqtt QoS 2 subscriber with a kept session whose connection is cut mid-handshake, then
reconnects (paho's own reconnect) — through a TCP proxy this script runs between it and the
broker. Prints one JSON object.

usage: paho_qos2_resume.py PORT VERSION(3.1.1|5) CUT [PAUSE_DIR]

  CUT = pubrec   the proxy forwards the subscriber's PUBREC of the first message, then cuts
                 the connection at once (the broker's PUBREL never reaches the subscriber)
  CUT = publish  the proxy forwards the broker's PUBLISH of the first message, then cuts the
                 connection at once (the subscriber's PUBREC never reaches the broker)

A publisher (straight to the broker) sends three warm-up messages, then `first` at QoS 2; after the cut and the reconnect it
sends `marker`. With PAUSE_DIR, after the cut (and the publisher's acknowledgement of `first`)
it writes PAUSE_DIR/cut and lets no connection through to the broker until PAUSE_DIR/go
exists (the test restarts the broker, or fails its group over, meanwhile: PAUSE_DIR/go holds
the port to go on with); a new publisher sends `marker` there. Output: every message the application was handed (payload, in order), and the
packet ids of the PUBLISHes of `first` the proxy saw going to the subscriber (before and after
the cut) and of the PUBRELs it saw."""

import json
import socket
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST = "127.0.0.1"
GUARD = 30.0

import os

port, version, cut = int(sys.argv[1]), sys.argv[2], sys.argv[3]
pause_dir = sys.argv[4] if len(sys.argv) > 4 else None
v5 = version == "5"
protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
TOPIC = f"resume/{cut}/{version}"


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


class Packets:
    """Splits a byte stream into MQTT packets (fixed header + remaining length)."""

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data
        out = []
        while len(self.buf) >= 2:
            length, shift, i = 0, 0, 1
            while True:
                if i >= len(self.buf):
                    return out
                b = self.buf[i]
                length |= (b & 0x7F) << shift
                shift += 7
                i += 1
                if not b & 0x80:
                    break
            if len(self.buf) < i + length:
                return out
            out.append((self.buf[0], self.buf[i:i + length], self.buf[:i + length]))
            self.buf = self.buf[i + length:]
        return out


def publish_id(flags, body):
    """The packet id and payload of a PUBLISH at QoS 1 or 2 (None for QoS 0)."""
    if (flags >> 1) & 3 == 0:
        return None
    n = int.from_bytes(body[0:2], "big")
    pid = int.from_bytes(body[2 + n:4 + n], "big")
    rest = body[4 + n:]
    if v5:
        # Skip the properties (a variable byte integer length, then that many bytes).
        plen, shift, i = 0, 0, 0
        while True:
            b = rest[i]
            plen |= (b & 0x7F) << shift
            shift += 7
            i += 1
            if not b & 0x80:
                break
        rest = rest[i + plen:]
    return pid, rest


seen = {"first_ids": [], "pubrel_ids": [], "cuts": 0}
lock = threading.Lock()
armed = threading.Event()


paused = threading.Event()
resumed = threading.Event()


def proxy_connection(client):
    if paused.is_set() and not resumed.wait(GUARD * 4):
        client.close()
        return
    broker = socket.create_connection((HOST, port))
    done = threading.Event()
    cutting = threading.Event()

    def cut_now():
        cutting.set()
        for s in (client, broker):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        done.set()

    def pump(src, dst, to_client):
        parser = Packets()
        try:
            while not done.is_set():
                data = src.recv(65536)
                if not data:
                    break
                for first, body, raw in parser.feed(data):
                    if cutting.is_set():
                        return
                    kind = first >> 4
                    if to_client and kind == 3:
                        p = publish_id(first & 0x0F, body)
                        if p and p[1] == b"first":
                            with lock:
                                seen["first_ids"].append(p[0])
                    if to_client and kind == 6:
                        with lock:
                            seen["pubrel_ids"].append(int.from_bytes(body[0:2], "big"))
                    dst.sendall(raw)
                    if armed.is_set() and (
                        (cut == "pubrec" and not to_client and kind == 5)
                        or (cut == "publish" and to_client and kind == 3
                            and publish_id(first & 0x0F, body) is not None)
                    ):
                        armed.clear()
                        if pause_dir:
                            paused.set()
                        with lock:
                            seen["cuts"] += 1
                        cut_now()
                        return
        except OSError:
            pass
        finally:
            cut_now()

    threading.Thread(target=pump, args=(client, broker, False), daemon=True).start()
    threading.Thread(target=pump, args=(broker, client, True), daemon=True).start()
    done.wait()
    for s in (client, broker):
        s.close()


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((HOST, 0))
listener.listen(8)
proxy_port = listener.getsockname()[1]


def accept_loop():
    while True:
        c, _ = listener.accept()
        threading.Thread(target=proxy_connection, args=(c,), daemon=True).start()


threading.Thread(target=accept_loop, daemon=True).start()

cond = threading.Condition()
got = []
connects = []
kwargs = {} if v5 else {"clean_session": False}
sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"q2-{cut}-{version}",
                  protocol=protocol, **kwargs)
sub.reconnect_delay_set(min_delay=0.1, max_delay=0.5)


def on_connect(c, userdata, flags, reason, props):
    with cond:
        connects.append(bool(flags.session_present))
        cond.notify_all()


def on_subscribe(c, userdata, mid, reasons, props):
    with cond:
        connects.append("subscribed")
        cond.notify_all()


def on_message(c, userdata, msg):
    with cond:
        got.append(msg.payload.decode())
        cond.notify_all()


sub.on_connect, sub.on_subscribe, sub.on_message = on_connect, on_subscribe, on_message
if v5:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    sub.connect(HOST, proxy_port, keepalive=30, clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=props)
else:
    # A clean start first: nothing kept from an earlier run.
    sub.connect(HOST, proxy_port, keepalive=30)
sub.loop_start()
with cond:
    if not cond.wait_for(lambda: len(connects) >= 1, GUARD):
        fail("the subscriber did not connect")
sub.subscribe(TOPIC, qos=2)
with cond:
    if not cond.wait_for(lambda: "subscribed" in connects, GUARD):
        fail("no SUBACK")

pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"q2-pub-{cut}-{version}",
                  protocol=protocol)
pub.connect(HOST, port, keepalive=30)
pub.loop_start()
# Deliveries before the cut, so `first` does not have the first packet id of a connection.
for i in range(3):
    pub.publish(TOPIC, f"warm-up-{i}", qos=2).wait_for_publish(GUARD)
with cond:
    if not cond.wait_for(lambda: len(got) == 3, GUARD):
        fail(f"the warm-up messages did not arrive: {got}")
armed.set()
info = pub.publish(TOPIC, "first", qos=2)
info.wait_for_publish(GUARD)
if pause_dir:
    deadline = time.time() + GUARD
    while True:
        with lock:
            if seen["cuts"] == 1:
                break
        if time.time() > deadline:
            fail(f"no cut: {seen}")
        time.sleep(0.02)
    with open(os.path.join(pause_dir, "cut"), "w") as f:
        f.write("cut")
    go = os.path.join(pause_dir, "go")
    deadline = time.time() + GUARD * 4
    while not os.path.exists(go):
        if time.time() > deadline:
            fail("never told to go on")
        time.sleep(0.05)
    time.sleep(0.1)
    with open(go) as f:
        port = int(f.read().strip())
    pub.loop_stop()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                      client_id=f"q2-pub2-{cut}-{version}", protocol=protocol)
    pub.connect(HOST, port, keepalive=30)
    pub.loop_start()
    resumed.set()
# The cut, then paho's reconnect with its session.
with cond:
    if not cond.wait_for(lambda: len([c for c in connects if c != "subscribed"]) >= 2,
                         GUARD):
        fail(f"the subscriber did not reconnect after the cut: {connects} {seen}")
info = pub.publish(TOPIC, "marker", qos=2)
info.wait_for_publish(GUARD)
with cond:
    if not cond.wait_for(lambda: "marker" in got, GUARD):
        fail(f"the marker never arrived: {got} {connects} {seen}")
# `first` came before the marker, or never; anything more would be a second delivery.
time.sleep(1.0)
for c in (sub, pub):
    c.disconnect()
    c.loop_stop()
with cond, lock:
    print(json.dumps({"got": got, "connects": connects, **seen}))
