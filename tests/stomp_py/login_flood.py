"""A login flood against a broker's STOMP listener, and what a well-behaved client sees meanwhile.

Starts PROCESSES flood processes of THREADS threads each; every thread binds its own loopback
source address (127.<100+process>.<thread>.1, so per-address backoff meets many addresses) and
for SECONDS sends CONNECT with the good user's name and a wrong passcode, again and again, each
on a new connection. Meanwhile the main process:
  - samples the broker's resident memory (VmRSS of PID) every 50 ms;
  - keeps one logged-in connection and times round trips (SEND to a queue it subscribes to,
    until the MESSAGE comes back), one every 20 ms;
  - every second logs in afresh with the right passcode and times it (or counts it refused:
    during a flood from many addresses the verification slots may all be taken).

Prints one JSON line: attempts, answers by kind, rss_start/rss_max (bytes), rtt_p50/p99/max and
login_max (seconds), and how many of each were done.

usage: login_flood.py HOST PORT PID USER PASSWORD PROCESSES THREADS SECONDS
"""

import json
import multiprocessing
import socket
import sys
import threading
import time


def frame(command, headers, body=""):
    lines = [command] + ["%s:%s" % (k, v) for k, v in headers] + ["", body]
    return ("\n".join(lines) + "\0").encode()


def read_frame(sock, buf):
    """The next frame's command (heart-beat newlines skipped) and the rest of the buffer."""
    while True:
        stripped = buf.lstrip(b"\r\n")
        end = stripped.find(b"\0")
        if end >= 0:
            head = stripped[:end]
            return head.split(b"\n", 1)[0].decode(errors="replace"), stripped[end + 1 :]
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        buf = stripped + chunk


def flood_thread(host, port, user, source, deadline, counts, lock):
    mine = {"attempts": 0, "error": 0, "closed": 0, "connect_failed": 0, "connected": 0}
    n = 0
    while time.time() < deadline:
        n += 1
        mine["attempts"] += 1
        try:
            s = socket.socket()
            s.settimeout(15)
            s.bind((source, 0))
            s.connect((host, port))
            s.sendall(
                frame(
                    "CONNECT",
                    [("accept-version", "1.2"), ("host", "x"), ("login", user), ("passcode", "wrong-%d" % n)],
                )
            )
            command, _ = read_frame(s, b"")
            if command == "ERROR":
                mine["error"] += 1
            elif command == "CONNECTED":
                mine["connected"] += 1
            else:
                mine["closed"] += 1
            s.close()
        except OSError:
            mine["connect_failed"] += 1
            time.sleep(0.01)
    with lock:
        for k, v in mine.items():
            counts[k] = counts.get(k, 0) + v


def flood_process(index, host, port, user, threads, deadline, queue):
    counts, lock = {}, threading.Lock()
    workers = [
        threading.Thread(
            target=flood_thread,
            args=(host, port, user, "127.%d.%d.1" % (100 + index, t + 1), deadline, counts, lock),
        )
        for t in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put(counts)


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def login(host, port, user, password):
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(frame("CONNECT", [("accept-version", "1.2"), ("host", "x"), ("login", user), ("passcode", password)]))
    command, buf = read_frame(s, b"")
    if command != "CONNECTED":
        raise RuntimeError("the good client's login got %r" % command)
    return s, buf


def percentile(values, p):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100.0 * (len(ordered) - 1))))]


def main():
    host, port, pid, user, password = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    processes, threads, seconds = int(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8])

    good, buf = login(host, port, user, password)
    good.sendall(frame("SUBSCRIBE", [("id", "1"), ("destination", "/queue/login-flood-rtt"), ("ack", "auto")]))
    rss_start = rss(pid)

    deadline = time.time() + seconds
    queue = multiprocessing.Queue()
    floods = [
        multiprocessing.Process(target=flood_process, args=(i, host, port, user, threads, deadline, queue))
        for i in range(processes)
    ]
    for p in floods:
        p.start()

    samples = {"rss_max": rss_start}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples["rss_max"] = max(samples["rss_max"], rss(pid))
            time.sleep(0.05)

    logins, busy = [], []

    def relogin():
        while not stop.is_set():
            t = time.time()
            try:
                s, _ = login(host, port, user, password)
                logins.append(time.time() - t)
                s.close()
            except RuntimeError:
                busy.append(time.time() - t)
            stop.wait(1.0)

    helpers = [threading.Thread(target=sample), threading.Thread(target=relogin)]
    for h in helpers:
        h.start()

    rtts = []
    n = 0
    while time.time() < deadline:
        n += 1
        t = time.time()
        good.sendall(frame("SEND", [("destination", "/queue/login-flood-rtt")], "rtt-%d" % n))
        while True:
            command, buf = read_frame(good, buf)
            if command is None:
                raise RuntimeError("the good client's connection closed")
            if command == "MESSAGE":
                break
            if command == "ERROR":
                raise RuntimeError("the good client got an ERROR")
        rtts.append(time.time() - t)
        time.sleep(0.02)

    totals = {}
    for _ in floods:
        for k, v in queue.get().items():
            totals[k] = totals.get(k, 0) + v
    for p in floods:
        p.join()
    stop.set()
    for h in helpers:
        h.join()
    good.close()
    print(
        json.dumps(
            {
                "flood": totals,
                "rss_start": rss_start,
                "rss_max": samples["rss_max"],
                "round_trips": len(rtts),
                "rtt_p50": percentile(rtts, 50),
                "rtt_p99": percentile(rtts, 99),
                "rtt_max": max(rtts) if rtts else None,
                "logins": len(logins),
                "login_max": max(logins) if logins else None,
                "logins_refused": len(busy),
            }
        )
    )


if __name__ == "__main__":
    main()
