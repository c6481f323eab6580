"""Sends inside a transaction appear only at COMMIT and never after ABORT; an acknowledgement
inside an aborted transaction is undone (the message comes back), one inside a committed
transaction holds."""

import sys

from stomp_helpers import bodies, connect, done, send, subscribe

port = int(sys.argv[1])
q = "/queue/tx.orders"
prod, pr = connect(port, "producer")
cons, cr = connect(port, "consumer")
subscribe(cons, cr, q, "1", ack="client-individual")


def ack_all(messages):
    for m in messages:
        cons.ack(m["headers"]["ack"])


# Commit: the transaction's sends stay invisible (a later plain send overtakes them) until COMMIT.
prod.begin("tx-commit")
prod.send(q, "in-tx-1", headers={"transaction": "tx-commit"})
prod.send(q, "in-tx-2", headers={"transaction": "tx-commit"})
send(prod, pr, q, "outside-1", "p-outside-1")
before_commit = cr.take(1)
prod.commit("tx-commit", receipt="commit")
pr.receipt("commit")
after_commit = cr.take(2)
ack_all(before_commit + after_commit)

# Abort: the transaction's send never appears.
prod.begin("tx-abort")
prod.send(q, "aborted", headers={"transaction": "tx-abort"})
prod.abort("tx-abort", receipt="abort")
pr.receipt("abort")
send(prod, pr, q, "outside-2", "p-outside-2")
after_abort = cr.take(1)
ack_all(after_abort)

# An ACK inside an aborted transaction is undone; inside a committed one it holds.
send(prod, pr, q, "to-ack", "p-to-ack")
m = cr.take(1)[0]
cons.begin("tx-ack-abort")
cons.ack(m["headers"]["ack"], transaction="tx-ack-abort")
cons.abort("tx-ack-abort", receipt="ack-abort")
back = cr.take(1)[0]
cons.begin("tx-ack-commit")
cons.ack(back["headers"]["ack"], transaction="tx-ack-commit")
cons.commit("tx-ack-commit", receipt="ack-commit")
cr.receipt("ack-commit")
cons.disconnect(receipt="bye-consumer")

later, lr = connect(port, "later")
subscribe(later, lr, q, "1")
send(prod, pr, q, "marker", "p-marker")
left = lr.take(1)
later.disconnect(receipt="bye")
prod.disconnect(receipt="bye")

done({
    "before_commit": bodies(before_commit),
    "after_commit": bodies(after_commit),
    "after_abort": bodies(after_abort),
    "ack_aborted": {"body": back["body"], "redelivered": back["headers"].get("redelivered")},
    "left": bodies(left),
})
