"""The broker answers every frame that asks for a receipt, in order: SUBSCRIBE, SEND, ACK, NACK,
BEGIN, SEND in a transaction, COMMIT, ABORT, UNSUBSCRIBE and DISCONNECT."""

import sys

from stomp_helpers import connect, done

port = int(sys.argv[1])
q = "/queue/receipts"
c, r = connect(port, "client")
asked = []


def waited(receipt):
    asked.append(receipt)
    r.receipt(receipt)


c.subscribe(q, id="1", ack="client-individual", headers={"receipt": "r-subscribe"})
waited("r-subscribe")
c.send(q, "a", headers={"receipt": "r-send-a"})
waited("r-send-a")
c.send(q, "b", headers={"receipt": "r-send-b"})
waited("r-send-b")
a, b = r.take(2)
c.ack(a["headers"]["ack"], receipt="r-ack")
waited("r-ack")
c.nack(b["headers"]["ack"], receipt="r-nack")
waited("r-nack")
c.ack(r.take(1)[0]["headers"]["ack"])
c.begin("t1", receipt="r-begin")
waited("r-begin")
c.send(q, "c", headers={"transaction": "t1", "receipt": "r-send-in-tx"})
waited("r-send-in-tx")
c.commit("t1", receipt="r-commit")
waited("r-commit")
c.ack(r.take(1)[0]["headers"]["ack"])
c.begin("t2", receipt="r-begin-2")
waited("r-begin-2")
c.abort("t2", receipt="r-abort")
waited("r-abort")
c.unsubscribe("1", headers={"receipt": "r-unsubscribe"})
waited("r-unsubscribe")
c.disconnect(receipt="r-disconnect")
asked.append("r-disconnect")
r.receipt("r-disconnect")

done({"asked": asked, "received": r.receipts})
