"""A topic delivers every message, in order, to each of several subscribers."""

import sys

from stomp_helpers import bodies, connect, done, send, subscribe

port = int(sys.argv[1])
subs = []
for i in range(3):
    conn, rec = connect(port, "subscriber-%d" % i)
    subscribe(conn, rec, "/topic/news.sport", "s%d" % i)
    subs.append((conn, rec))
prod, pr = connect(port, "producer")
for i in range(10):
    send(prod, pr, "/topic/news.sport", "t%d" % i, "p%d" % i)
seen = [bodies(rec.take(10)) for _, rec in subs]
for conn, _ in subs:
    conn.disconnect(receipt="bye")
prod.disconnect(receipt="bye")
done({"subscribers": seen})
