"""A stomp.py consumer selects with the `selector` header: first a selector that does not parse
(the broker must answer with an ERROR naming it), then, on a new connection, a good one whose
matches it takes (acknowledging each), watching a little longer for any message it should not
get. Arguments: PORT DESTINATION SELECTOR COUNT."""

import sys
import time

from stomp_helpers import GUARD, connect, done, fail

port, destination, selector, count = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])

bad, bad_rec = connect(port, "bad")
bad.subscribe(destination, id="1", ack="client-individual", headers={"selector": "size > > 3"})
deadline = time.monotonic() + GUARD
with bad_rec.cond:
    while not bad_rec.errors:
        left = deadline - time.monotonic()
        if left <= 0:
            fail("no ERROR for a selector that does not parse")
        bad_rec.cond.wait(left)
error = bad_rec.errors[0]

c, r = connect(port, "good")
c.subscribe(destination, id="1", ack="client-individual",
            headers={"selector": selector, "receipt": "subscribed"})
r.receipt("subscribed")
got = []
for m in r.take(count):
    got.append(m["body"])
    c.ack(m["headers"]["ack"])
# Anything past the expected count is a message the selector should have kept away.
time.sleep(0.5)
with r.cond:
    got.extend(m["body"] for m in r.messages)
c.disconnect()

done({"bodies": got, "error": error})
