"""paho-mqtt (MQTT 5) against meshmq: the will delay interval. Each will client has a session
that outlives its connection and vanishes (its socket closes without a DISCONNECT); a watcher
subscribed to `delayed/#` records when each will arrives, counted from the vanishing.

  late     will delay 2 s, session expiry 60 s: the will comes after its delay
  back     will delay 3 s, session expiry 60 s, the client reconnects to its session at once:
           no will, ever (the watcher waits the delay and more)
  brief    will delay 30 s, session expiry 1 s: the session ends first, and the will with it
  restart  will delay 30 s, session expiry 60 s, the client reconnects with a clean start:
           its old session ends, so the will comes then

Prints one JSON object: {"arrived": {NAME: seconds after vanishing}, "back_seen": bool}.

usage: paho_will_delay.py PORT"""

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


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def connect(client_id, clean, expiry, will=None, loop=True):
    """A connected MQTT 5 client; `will`: (topic, delay seconds)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv5)
    connected = threading.Event()
    c.on_connect = lambda c, u, f, r, p: connected.set()
    if will:
        props = Properties(PacketTypes.WILLMESSAGE)
        props.WillDelayInterval = will[1]
        c.will_set(will[0], "gone", qos=1, properties=props)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    c.connect(HOST, port, keepalive=30, clean_start=clean, properties=props)
    if loop:
        c.loop_start()
        if not connected.wait(GUARD):
            fail(f"{client_id}: no CONNACK")
    else:
        deadline = time.time() + GUARD
        while not connected.is_set():
            c.loop(0.1)
            if time.time() > deadline:
                fail(f"{client_id}: no CONNACK")
    return c


def vanish(name, delay, expiry):
    """Connects `name` with its will and closes its socket: returns when that happened."""
    c = connect(f"will-{name}", clean=True, expiry=expiry, will=(f"delayed/{name}", delay),
                loop=False)
    c.socket().close()
    return time.time()


cond = threading.Condition()
arrivals = {}
watcher = connect("will-watcher", clean=True, expiry=0)
subscribed = threading.Event()
watcher.on_subscribe = lambda c, u, mid, reasons, p: subscribed.set()


def on_message(c, u, msg):
    with cond:
        arrivals[msg.topic.split("/", 1)[1]] = time.time()
        cond.notify_all()


watcher.on_message = on_message
watcher.subscribe("delayed/#", qos=1)
if not subscribed.wait(GUARD):
    fail("no SUBACK")


def arrived_after(name, since):
    with cond:
        if not cond.wait_for(lambda: name in arrivals, GUARD):
            fail(f"the will of {name} never came: {arrivals}")
        return round(arrivals[name] - since, 2)


result = {"arrived": {}}
t = vanish("late", delay=2, expiry=60)
result["arrived"]["late"] = arrived_after("late", t)

t = vanish("back", delay=3, expiry=60)
again = connect("will-back", clean=False, expiry=60)
again.disconnect()
again.loop_stop()
time.sleep(3 + 2)

t = vanish("brief", delay=30, expiry=1)
result["arrived"]["brief"] = arrived_after("brief", t)

t = vanish("restart", delay=30, expiry=60)
fresh = connect("will-restart", clean=True, expiry=0)
result["arrived"]["restart"] = arrived_after("restart", t)
fresh.disconnect()
fresh.loop_stop()

with cond:
    result["back_seen"] = "back" in arrivals
watcher.disconnect()
watcher.loop_stop()
print(json.dumps(result))
