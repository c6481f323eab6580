"""Queues with client-individual acknowledgement (a NACKed message comes back marked
redelivered, acknowledged ones never do) and client (cumulative) acknowledgement (an ACK covers
every earlier message; the rest return when the consumer leaves)."""

import sys

from stomp_helpers import bodies, connect, done, send, subscribe

port = int(sys.argv[1])
prod, pr = connect(port, "producer")

# client-individual: ack m1 and m3, nack m2.
q = "/queue/acks.individual"
cons, cr = connect(port, "individual")
subscribe(cons, cr, q, "1", ack="client-individual")
for b in ["m1", "m2", "m3"]:
    send(prod, pr, q, b, "p-" + b)
first = cr.take(3)
cons.ack(first[0]["headers"]["ack"])
cons.nack(first[1]["headers"]["ack"])
cons.ack(first[2]["headers"]["ack"])
again = cr.take(1)[0]
cons.ack(again["headers"]["ack"], receipt="ack-again")
cr.receipt("ack-again")
cons.disconnect(receipt="bye-individual")

# Nothing is left: a new consumer's first message is one sent after.
after, ar = connect(port, "individual-after")
subscribe(after, ar, q, "1")
send(prod, pr, q, "marker", "p-marker")
left = ar.take(1)
after.disconnect(receipt="bye-after")

# client: ack the third of five; the fourth and fifth come back after the consumer leaves.
q2 = "/queue/acks.cumulative"
cum, cumr = connect(port, "cumulative")
subscribe(cum, cumr, q2, "1", ack="client")
for i in range(1, 6):
    send(prod, pr, q2, "c%d" % i, "p-c%d" % i)
five = cumr.take(5)
cum.ack(five[2]["headers"]["ack"], receipt="ack-cumulative")
cumr.receipt("ack-cumulative")
cum.disconnect(receipt="bye-cumulative")

rest, rr = connect(port, "cumulative-after")
subscribe(rest, rr, q2, "1")
send(prod, pr, q2, "marker", "p-marker-2")
returned = rr.take(3)
rest.disconnect(receipt="bye-rest")
prod.disconnect(receipt="bye-producer")

done({
    "individual_first": bodies(first),
    "individual_first_redelivered": [m["headers"].get("redelivered") for m in first],
    "nacked": {"body": again["body"], "redelivered": again["headers"].get("redelivered")},
    "individual_left": bodies(left),
    "cumulative_first": bodies(five),
    "cumulative_returned": [[m["body"], m["headers"].get("redelivered")] for m in returned],
})
