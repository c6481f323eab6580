"""A durable topic subscription (client-id + activemq.subscriptionName) keeps the messages
published while its client is away and hands them over when it comes back; UNSUBSCRIBE with
the subscription name deletes it."""

import sys

from stomp_helpers import bodies, connect, done, send, subscribe

port = int(sys.argv[1])
topic = "/topic/news.durable"
who = {"client-id": "durable-client"}
named = {"activemq.subscriptionName": "news-sub"}
prod, pr = connect(port, "producer")

d1, r1 = connect(port, "durable-1", headers=who)
subscribe(d1, r1, topic, "d", **named)
send(prod, pr, topic, "while-online", "p-online")
online = r1.take(1)
d1.disconnect(receipt="bye-1")

send(prod, pr, topic, "offline-1", "p-offline-1")
send(prod, pr, topic, "offline-2", "p-offline-2")

d2, r2 = connect(port, "durable-2", headers=who)
subscribe(d2, r2, topic, "d", **named)
offline = r2.take(2)
d2.unsubscribe("d", headers=dict(named, receipt="unsub"))
r2.receipt("unsub")
d2.disconnect(receipt="bye-2")

send(prod, pr, topic, "after-removal", "p-after-removal")
d3, r3 = connect(port, "durable-3", headers=who)
subscribe(d3, r3, topic, "d", **named)
send(prod, pr, topic, "fresh", "p-fresh")
fresh = r3.take(1)
d3.disconnect(receipt="bye-3")
prod.disconnect(receipt="bye")

done({
    "online": bodies(online),
    "offline": bodies(offline),
    "after_removal_first": bodies(fresh),
})
