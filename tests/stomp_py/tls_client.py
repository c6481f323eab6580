"""A stomp.py client over TLS: trusts the CA file given (and presents a client certificate
when given one), then exchanges a message. Prints whether it got in and what happened."""

import sys
import time

import stomp

from stomp_helpers import GUARD, HOST, Recorder, done, send, subscribe

port = int(sys.argv[1])
ca = sys.argv[2]
cert = sys.argv[3] if len(sys.argv) > 4 else None
key = sys.argv[4] if len(sys.argv) > 4 else None

conn = stomp.Connection12([(HOST, port)], reconnect_attempts_max=1)
conn.set_ssl(for_hosts=[(HOST, port)], ca_certs=ca, cert_file=cert, key_file=key)
rec = Recorder("tls")
conn.set_listener("recorder", rec)
try:
    conn.connect(wait=False)
except Exception as e:  # the TLS handshake failed on our side (an untrusted server)
    done({"connected": False, "error": "%s: %s" % (type(e).__name__, e)})
    sys.exit(0)

# The server may refuse after the handshake looked complete to us (a missing client
# certificate under TLS 1.3): then the connection just ends. stomp.py 9 does not always
# notice that end on a TLS socket (its non-blocking TLS reader takes an end of stream for
# "no data yet"; only a failed write of CONNECT reveals it), so a CONNECTED that never
# comes within the guard also counts as a refusal; the caller checks the broker's own
# count of refused handshakes to tell a refusal from a hang.
deadline = time.monotonic() + GUARD
with rec.cond:
    while rec.connected is None and not rec.disconnected and not rec.errors:
        if time.monotonic() > deadline:
            break
        rec.cond.wait(0.1)
if rec.connected is None:
    seen = "closed by the broker" if rec.disconnected or rec.errors else "no CONNECTED within %ss" % GUARD
    done({"connected": False, "error": "%s: %s" % (seen, rec.errors)})
    sys.exit(0)

subscribe(conn, rec, "/queue/tls", "1")
send(conn, rec, "/queue/tls", "over-tls", "p1")
got = rec.take(1)
conn.disconnect(receipt="bye")
done({"connected": True, "body": got[0]["body"]})
