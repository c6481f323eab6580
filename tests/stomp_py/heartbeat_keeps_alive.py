"""A client that keeps its heart-beat promise stays connected through many intervals of
silence, and the broker beats too."""

import sys
import time

from stomp_helpers import connect, done, send, subscribe

port = int(sys.argv[1])
interval_ms = int(sys.argv[2])
idle_s = float(sys.argv[3])
c, r = connect(port, "beating", heartbeats=(interval_ms, interval_ms))
subscribe(c, r, "/queue/heartbeats", "1")
# Idle: only heart-beats cross the connection.
time.sleep(idle_s)
connected = c.is_connected()
send(c, r, "/queue/heartbeats", "still-here", "p1")
got = r.take(1)
c.disconnect(receipt="bye")
done({
    "negotiated": r.connected.get("heart-beat"),
    "connected_after_idle": connected,
    "heartbeats_from_broker": r.heartbeats,
    "errors": r.errors,
    "body": got[0]["body"],
})
