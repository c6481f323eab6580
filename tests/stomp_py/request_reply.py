"""Request/reply through a temporary queue: the responder sees reply-to as
/remote-temp-queue/<connection>.<name>, and sending there reaches the requester."""

import sys

from stomp_helpers import connect, done, send, subscribe

port = int(sys.argv[1])
responder, rr = connect(port, "responder")
subscribe(responder, rr, "/queue/service.echo", "svc")
requester, qr = connect(port, "requester")
subscribe(requester, qr, "/temp-queue/replies", "replies")
send(requester, qr, "/queue/service.echo", "ping", "req",
     **{"reply-to": "/temp-queue/replies", "correlation-id": "corr-1"})
request = rr.take(1)[0]
reply_to = request["headers"]["reply-to"]
send(responder, rr, reply_to, "pong", "resp",
     **{"correlation-id": request["headers"]["correlation-id"]})
reply = qr.take(1)[0]
responder.disconnect(receipt="bye")
requester.disconnect(receipt="bye")
done({
    "request_body": request["body"],
    "responder_saw_reply_to": reply_to,
    "reply_body": reply["body"],
    "reply_correlation_id": reply["headers"].get("correlation-id"),
    "reply_destination": reply["headers"].get("destination"),
})
