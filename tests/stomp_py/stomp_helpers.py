"""What the stomp.py interop scripts share: connecting with a chosen STOMP version, a listener
that records every frame, and waiting for frames with a deadline that only guards against a
hang. A script prints one JSON object (its observations) as its last line, or exits non-zero
with a message on standard error."""

import json
import sys
import threading
import time

import stomp

HOST = "127.0.0.1"
# A wait longer than this is a hang: the script fails instead of blocking the test run.
GUARD = 30.0

CLASSES = {
    "1.0": stomp.Connection10,
    "1.1": stomp.Connection11,
    "1.2": stomp.Connection12,
}


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def done(result):
    print(json.dumps(result))
    sys.stdout.flush()


class Recorder(stomp.ConnectionListener):
    """Records what the broker sends on one connection."""

    def __init__(self, name):
        self.name = name
        self.cond = threading.Condition()
        self.connected = None
        self.messages = []
        self.receipts = []
        self.errors = []
        self.heartbeats = 0
        self.disconnected = False

    def _add(self, fn):
        with self.cond:
            fn()
            self.cond.notify_all()

    def on_connected(self, frame):
        self._add(lambda: setattr(self, "connected", dict(frame.headers)))

    def on_message(self, frame):
        self._add(lambda: self.messages.append({"headers": dict(frame.headers), "body": frame.body}))

    def on_receipt(self, frame):
        self._add(lambda: self.receipts.append(frame.headers.get("receipt-id")))

    def on_error(self, frame):
        self._add(lambda: self.errors.append(frame.headers.get("message", "")))

    def on_heartbeat(self):
        self._add(lambda: setattr(self, "heartbeats", self.heartbeats + 1))

    def on_disconnected(self):
        self._add(lambda: setattr(self, "disconnected", True))

    def wait_for(self, what, predicate):
        deadline = time.monotonic() + GUARD
        with self.cond:
            while not predicate():
                if self.errors:
                    fail("%s: ERROR from the broker while waiting for %s: %s" % (self.name, what, self.errors))
                left = deadline - time.monotonic()
                if left <= 0:
                    fail("%s: no %s within %ss (messages %s, receipts %s)"
                         % (self.name, what, GUARD, self.messages, self.receipts))
                self.cond.wait(left)

    def take(self, n):
        """The next n messages, in arrival order."""
        self.wait_for("%d message(s)" % n, lambda: len(self.messages) >= n)
        with self.cond:
            out = self.messages[:n]
            del self.messages[:n]
        return out

    def receipt(self, receipt_id):
        self.wait_for("receipt %s" % receipt_id, lambda: receipt_id in self.receipts)


def connect(port, name, version="1.2", heartbeats=(0, 0), login=None, passcode=None,
            headers=None):
    """A connected stomp.py connection of `version` and its recorder."""
    cls = CLASSES[version]
    kwargs = {"reconnect_attempts_max": 1}
    if version != "1.0":
        kwargs["heartbeats"] = heartbeats
    conn = cls([(HOST, port)], **kwargs)
    rec = Recorder(name)
    conn.set_listener("recorder", rec)
    conn.connect(login, passcode, wait=True, headers=headers or {})
    return conn, rec


def send(conn, rec, destination, body, receipt, **headers):
    """Sends and waits for the broker's receipt."""
    headers["receipt"] = receipt
    conn.send(destination, body, headers=headers)
    rec.receipt(receipt)


def subscribe(conn, rec, destination, sub_id, ack="auto", **headers):
    """Subscribes and waits until the broker confirms the subscription."""
    receipt = "sub-%s-%s" % (sub_id, destination)
    headers["receipt"] = receipt
    conn.subscribe(destination, id=sub_id, ack=ack, headers=headers)
    rec.receipt(receipt)


def bodies(messages):
    return [m["body"] for m in messages]
