"""A stomp.py producer and consumer that follow their group to a new master (S28): each lists
every member in host_and_ports, with heart-beats (1000, 1000); when its link breaks it connects
again (stomp.py tries the hosts in turn until one accepts: a standby opens no listener) and the
consumer subscribes again, with client-individual acks. The producer sends persistent messages
one at a time, each with a receipt; a send that gets no receipt is in doubt and goes again after
the reconnect. The consumer is slow: it acknowledges each message 10 ms after it arrived, so the
master dies with messages delivered and not yet acknowledged (the new master must flag them).
An ack id belongs to the connection it arrived on: acks wait for that connection's CONNECTED and
are dropped once a reconnect begins, so no ACK ever precedes the CONNECT of a new connection.
A failure in any thread ends the whole script (non-zero), never just that thread.

Arguments: comma-separated STOMP ports, the queue, how many messages. Prints what it saw:
accepted and in-doubt bodies, every delivery (body, flagged redelivered) in order, and each
side's connects (the port each connect reached)."""

import os
import queue as queues
import sys
import threading
import time

import stomp

from stomp_helpers import GUARD, HOST, done

ports = [int(p) for p in sys.argv[1].split(",")]
queue = sys.argv[2]
total = int(sys.argv[3])
HOSTS = [(HOST, p) for p in ports]
# How long a send waits for its receipt before it counts as in doubt.
RECEIPT_WAIT = 5.0
# How long the consumer works on each message before acknowledging it.
WORK = 0.01


def fail(message):
    """Ends the script from any thread (sys.exit in a thread would end only that thread)."""
    print(message, file=sys.stderr, flush=True)
    os._exit(1)


class Side(stomp.ConnectionListener):
    """One connection that reconnects (and, for a consumer, resubscribes) when it breaks."""

    def __init__(self, name, consumer):
        self.name = name
        self.consumer = consumer
        self.cond = threading.Condition()
        self.receipts = set()
        self.deliveries = []
        self.errors = []
        self.connects = []
        self.broken = threading.Event()
        # Held while a connect begins or ends and while an ack goes out: a connect bumps
        # `epoch` (the connection an ack id belongs to) and `live` says that connection has
        # had its CONNECTED.
        self.lock = threading.Lock()
        self.epoch = 0
        self.live = False
        # (epoch, ack id) of each delivery, acknowledged in turn after WORK.
        self.to_ack = queues.Queue()
        self.conn = stomp.Connection12(
            HOSTS,
            heartbeats=(1000, 1000),
            reconnect_attempts_max=-1,
            reconnect_sleep_initial=0.05,
            reconnect_sleep_increase=0.5,
            reconnect_sleep_max=0.5,
        )
        self.conn.set_listener(name, self)

    def on_receipt(self, frame):
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id"))
            self.cond.notify_all()

    def on_message(self, frame):
        flagged = frame.headers.get("redelivered", "false") != "false"
        with self.cond:
            self.deliveries.append([frame.body, flagged])
            self.cond.notify_all()
        with self.lock:
            epoch = self.epoch
        self.to_ack.put((epoch, frame.headers["ack"]))

    def acknowledge(self, stop):
        """Acknowledges each delivery WORK after it arrived; an ack id of a broken connection
        means nothing on the next one, so it is dropped (the broker delivers that message
        again, flagged)."""
        while not stop.is_set():
            try:
                epoch, ack_id = self.to_ack.get(timeout=0.1)
            except queues.Empty:
                continue
            time.sleep(WORK)
            with self.lock:
                if epoch != self.epoch or not self.live or self.broken.is_set():
                    continue
                try:
                    self.conn.ack(ack_id)
                except stomp.exception.StompException:
                    pass

    def on_error(self, frame):
        with self.cond:
            self.errors.append(frame.headers.get("message", ""))

    def on_disconnected(self):
        self.broken.set()

    def wait_receipt(self, receipt_id, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while receipt_id not in self.receipts:
                left = deadline - time.monotonic()
                if left <= 0 or self.broken.is_set():
                    return False
                self.cond.wait(min(left, 0.1))
        return True

    def connect(self):
        """Connects to whichever member serves (and subscribes again), within the guard."""
        deadline = time.monotonic() + GUARD
        attempt = 0
        while True:
            attempt += 1
            with self.lock:
                self.epoch += 1
                self.live = False
            self.broken.clear()
            try:
                if self.conn.is_connected():
                    self.conn.disconnect()
                self.conn.connect(wait=True)
                with self.lock:
                    self.live = True
                self.connects.append(self.conn.transport.current_host_and_port[1])
                if self.consumer:
                    receipt = "sub-%d-%d" % (len(self.connects), attempt)
                    self.conn.subscribe(queue, id="1", ack="client-individual",
                                        headers={"receipt": receipt})
                    if not self.wait_receipt(receipt, RECEIPT_WAIT):
                        raise stomp.exception.ConnectFailedException("no subscription receipt")
                return
            except stomp.exception.StompException as e:
                if time.monotonic() > deadline:
                    fail("%s: no member took us back within %ss (%r; errors %s)"
                         % (self.name, GUARD, e, self.errors))
                time.sleep(0.1)


consumer = Side("consumer", consumer=True)
producer = Side("producer", consumer=False)
consumer.connect()
producer.connect()

stopping = threading.Event()


def keep_consuming():
    try:
        while not stopping.is_set():
            if consumer.broken.wait(0.1) and not stopping.is_set():
                consumer.connect()
    except BaseException as e:  # any failure here must fail the script
        fail("consumer reconnect failed: %r (errors %s)" % (e, consumer.errors))


watcher = threading.Thread(target=keep_consuming, daemon=True)
watcher.start()
acker = threading.Thread(target=consumer.acknowledge, args=(stopping,), daemon=True)
acker.start()

accepted, in_doubt = [], []
for n in range(total):
    body = "m-%d" % n
    attempt = 0
    while True:
        attempt += 1
        if producer.broken.is_set():
            producer.connect()
        receipt = "r-%d-%d" % (n, attempt)
        try:
            producer.conn.send(queue, body, headers={"receipt": receipt, "persistent": "true"})
        except stomp.exception.NotConnectedException:
            producer.broken.set()
            continue
        except OSError:
            # stomp.py closed the socket under the send (its reconnect found every broker
            # refusing for a moment, as while the standby takes over): the frame may or may not
            # have left, so the message is in doubt and is sent again on a new connection.
            in_doubt.append(body)
            producer.broken.set()
            continue
        if producer.wait_receipt(receipt, RECEIPT_WAIT):
            accepted.append(body)
            break
        in_doubt.append(body)
    time.sleep(0.005)

# Every accepted message arrives (within the guard); then a moment for late copies.
deadline = time.monotonic() + GUARD
with consumer.cond:
    while not set(accepted) <= {b for b, _ in consumer.deliveries}:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        consumer.cond.wait(min(left, 0.2))
time.sleep(1.0)
stopping.set()
watcher.join()
acker.join()
with consumer.cond:
    deliveries = list(consumer.deliveries)
for side in (consumer, producer):
    try:
        side.conn.disconnect()
    except stomp.exception.StompException:
        pass

done({
    "accepted": accepted,
    "in_doubt": in_doubt,
    "deliveries": deliveries,
    "consumer_connects": consumer.connects,
    "producer_connects": producer.connects,
    "errors": consumer.errors + producer.errors,
})
