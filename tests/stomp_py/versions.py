"""One STOMP version end to end: CONNECT (CONNECT for 1.0, STOMP for 1.1 and 1.2), the version
the broker answers, client acknowledgement the way that version names a message (1.0
message-id, 1.1 message-id + subscription, 1.2 the ack header), NACK where the version has it."""

import sys

from stomp_helpers import bodies, connect, done, send, subscribe

port = int(sys.argv[1])
version = sys.argv[2]
q = "/queue/versions.v" + version.replace(".", "_")
c, r = connect(port, "client", version=version)


def ack(m, **kw):
    h = m["headers"]
    if version == "1.0":
        c.ack(h["message-id"], **kw)
    elif version == "1.1":
        c.ack(h["message-id"], h["subscription"], **kw)
    else:
        c.ack(h["ack"], **kw)


def nack(m):
    h = m["headers"]
    if version == "1.1":
        c.nack(h["message-id"], h["subscription"])
    else:
        c.nack(h["ack"])


subscribe(c, r, q, "1", ack="client")
send(c, r, q, "first", "p1")
send(c, r, q, "second", "p2")
two = r.take(2)
# Cumulative: acknowledging the second covers the first.
ack(two[1], receipt="ack")
r.receipt("ack")

nacked = None
if version != "1.0":
    send(c, r, q, "to-nack", "p3")
    m = r.take(1)[0]
    nack(m)
    back = r.take(1)[0]
    nacked = {"body": back["body"], "redelivered": back["headers"].get("redelivered")}
    ack(back, receipt="ack-back")
    r.receipt("ack-back")
c.disconnect(receipt="bye")

later, lr = connect(port, "later", version=version)
subscribe(later, lr, q, "1")
send(later, lr, q, "marker", "p4")
left = lr.take(1)
later.disconnect(receipt="bye")

done({
    "version": r.connected.get("version"),
    "server": r.connected.get("server"),
    "bodies": bodies(two),
    "message_ids_present": all("message-id" in m["headers"] for m in two),
    "nacked": nacked,
    "left": bodies(left),
})
