#!/usr/bin/env python3
"""Attacks a running sitesignd from outside, as a hostile management point (with a valid MP
certificate) or an anonymous network client (without one) would. Raw sockets and hand-written
HTTP/1.1, so nothing in a client library smooths the attack over.

Usage: hostile.py COMMAND HOST PORT CA CERT KEY [ARGS...] — prints one JSON object.

  trickle PATH SECONDS     POST PATH declaring 1000 bytes, sending one byte a second for up to
                           SECONDS: {"status", "code", "seconds", "sent", "closed"}
  stall PATH               POST PATH declaring 1000 bytes, sending 10, then nothing
  batch-stall LINE         a batch: LINE, then half a line, then nothing:
                           {"status", "lines", "seconds", "closed"}
  batch-trickle SECONDS    a batch sent one byte a second for up to SECONDS
  batch-file FILE          a batch whose body is FILE, sent as fast as the server reads it:
                           {"status", "lines", "seconds", "closed"}
  hold-batch LINE          a batch: LINE, then nothing more until standard input closes; prints
                           {"first": <first response line>} as soon as it arrives, then, once
                           standard input closes, ends the body and prints the rest
  deaf FILE SECONDS        a batch whose body is FILE, sent whole (blocking), then nothing: the
                           answer is never read; the socket is held SECONDS: {"sent"}
  hold N                   N connections with the MP's certificate opened and held together, then
                           GET /healthz on each: {"answered"} (how many got 200)
  idle N SECONDS           N TCP connections that send nothing, held SECONDS:
                           {"opened", "closed_by_server"}
  crowd IDLE SLOW SECONDS  IDLE TLS connections with the MP's certificate that send nothing
                           after the handshake, and SLOW ones that POST a 1000-byte body one
                           byte a second, opened by 16 threads and held together for SECONDS:
                           {"idle_opened", "idle_open_at_end", "slow_opened",
                            "slow_open_at_end", "refused"}
  anonymous SECONDS THREADS
                           TLS handshakes without a client certificate, back to back, from
                           THREADS threads for SECONDS: {"handshakes", "refused_at_connect"} —
                           each completed handshake made the server's device sign once

HOSTILE_SOURCES (comma-separated loopback addresses, e.g. 127.0.0.2,127.0.0.3) makes `idle`
`crowd` and `anonymous` connect from those addresses in turn, so an attacker is not the management
point's own address.
"""
import itertools
import os
import json
import select
import socket
import ssl
import sys
import threading
import time

command = sys.argv[1]
host, port, ca, cert, key = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
args = sys.argv[7:]
sources = itertools.cycle([a for a in os.environ.get("HOSTILE_SOURCES", "").split(",") if a] or [None])
source_lock = threading.Lock()


def raw_connection(timeout):
    with source_lock:
        src = next(sources)
    return socket.create_connection((host, port), timeout=timeout, source_address=(src, 0) if src else None)


def context(with_cert=True):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    if with_cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def connect(timeout=120):
    raw = socket.create_connection((host, port), timeout=timeout)
    return context().wrap_socket(raw, server_hostname=host)


def parse_response(data):
    """Parses what arrived of one HTTP/1.1 response: (status, headers, body, complete). Handles
    content-length, chunked and read-to-close bodies."""
    if b"\r\n\r\n" not in data:
        return 0, {}, b"", False
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    if "content-length" in headers:
        n = int(headers["content-length"])
        return status, headers, rest[:n], len(rest) >= n
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while b"\r\n" in rest:
            size_line, after = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if len(after) < size + 2:
                break
            body += after[:size]
            rest = after[size + 2:]
            if size == 0:
                return status, headers, body, True
        return status, headers, body, False
    return status, headers, rest, False


def exchange(sock, outgoing, deadline=120):
    """Sends `outgoing` (a sequence of byte strings to send and numbers of seconds to pause) while
    reading the answer, on one thread: an SSL socket must not be read and written from two
    threads at once. Returns (status, headers, body, closed, sent): `closed` if the server closed
    the connection (at once, or within 2 s of a complete answer); `sent` the bytes sent."""
    sock.setblocking(False)
    started = time.monotonic()
    outgoing = iter(outgoing)
    pending, resume_at, sending = b"", 0.0, True
    received, sent, closed, complete_at = bytearray(), 0, False, None
    while time.monotonic() - started < deadline:
        now = time.monotonic()
        while sending and not pending and now >= resume_at:
            item = next(outgoing, None)
            if item is None:
                sending = False
            elif isinstance(item, (int, float)):
                resume_at = now + item
            else:
                pending = item
        waits = [x for x in (resume_at - now if sending and not pending else None,
                             2.0 - (now - complete_at) if complete_at is not None else None) if x is not None]
        timeout = max(0.0, min(waits + [1.0]))
        readable, writable, _ = select.select([sock], [sock] if pending else [], [], 0 if sock.pending() else timeout)
        if readable or sock.pending():
            try:
                while True:
                    data = sock.recv(65536)
                    if not data:
                        closed = True
                        break
                    received += data
                    if not sock.pending():
                        break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                pass
            except (ConnectionError, ssl.SSLError, OSError):
                closed = True
            if closed:
                break
            if complete_at is None and parse_response(bytes(received))[3]:
                complete_at = time.monotonic()
        if complete_at is not None and time.monotonic() - complete_at >= 2.0:
            break  # complete, and the server kept the connection open
        if writable and pending:
            try:
                n = sock.send(pending[:65536])
                pending, sent = pending[n:], sent + n
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                pass
            except (ConnectionError, ssl.SSLError, OSError):
                pending, sending = b"", False
    status, headers, body, _ = parse_response(bytes(received))
    return status, headers, body, closed, sent


def request_head(path, length=None, chunked=False):
    media = "application/x-ndjson" if path.endswith(":batch") else "application/json"
    h = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {media}\r\n"
    if chunked:
        h += "Transfer-Encoding: chunked\r\n"
    else:
        h += f"Content-Length: {length}\r\n"
    return (h + "\r\n").encode()


def chunk(data):
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def error_code(body):
    try:
        return json.loads(body)["error"]["code"]
    except Exception:
        return None


def ndjson(body):
    return [json.loads(l) for l in body.decode().splitlines() if l.strip()]


def trickle_single(path, seconds):
    s = connect()
    started = time.monotonic()
    head = request_head(path, 1000)
    outgoing = [head] + [x for _ in range(int(seconds)) for x in (b" ", 1.0)]
    status, _, body, closed, sent = exchange(s, outgoing, deadline=seconds + 30)
    return {"status": status, "code": error_code(body), "closed": closed, "seconds": time.monotonic() - started,
            "sent": max(0, sent - len(head))}


def stall_single(path):
    s = connect()
    started = time.monotonic()
    status, _, body, closed, _ = exchange(s, [request_head(path, 1000) + b'{"device_id": '])
    return {"status": status, "code": error_code(body), "closed": closed, "seconds": time.monotonic() - started}


def batch(outgoing, deadline=600):
    """Sends a chunked batch (`outgoing` after the head) while reading the answer."""
    s = connect()
    started = time.monotonic()
    status, _, body, closed, _ = exchange(s, [request_head("/v1/client-tokens:batch", chunked=True), *outgoing],
                                          deadline=deadline)
    return {"status": status, "lines": ndjson(body) if status == 200 else [], "code": error_code(body),
            "closed": closed, "seconds": time.monotonic() - started}


def file_chunks(path):
    with open(path, "rb") as f:
        while True:
            data = f.read(65536)
            if not data:
                break
            yield chunk(data)
    yield b"0\r\n\r\n"


if command == "trickle":
    out = trickle_single(args[0], float(args[1]))
elif command == "stall":
    out = stall_single(args[0])
elif command == "batch-stall":
    line = args[0].encode()
    out = batch([chunk(line + b"\n") + chunk(line[: len(line) // 2]), 3600.0])
elif command == "batch-trickle":
    out = batch([x for _ in range(int(float(args[0]))) for x in (chunk(b" "), 1.0)])
elif command == "batch-file":
    out = batch(file_chunks(args[0]))
elif command == "hold-batch":
    line = args[0].encode()
    s = connect()
    s.sendall(request_head("/v1/client-tokens:batch", chunked=True) + chunk(line + b"\n"))
    # The response's head and first line, as soon as they come.
    s.settimeout(120)
    data = b""
    while data.count(b"\n") < 1 or b"\r\n\r\n" not in data or b"{" not in data.split(b"\r\n\r\n", 1)[1]:
        c = s.recv(65536)
        if not c:
            break
        data += c
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    print(json.dumps({"status": int(head.split()[1]) if head else 0}), flush=True)
    sys.stdin.read()
    try:
        s.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    out = {"ended": True}
elif command == "deaf":
    s = connect()
    body = open(args[0], "rb").read()
    s.sendall(request_head("/v1/client-tokens:batch", length=len(body)) + body)
    time.sleep(float(args[1]))
    out = {"sent": len(body)}
elif command == "hold":
    held = []
    for _ in range(int(args[0])):
        try:
            held.append(connect(timeout=10))
        except (ConnectionError, ssl.SSLError, OSError):
            pass
    time.sleep(0.5)
    answered = 0
    for s in held:
        try:
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            if s.recv(4096).startswith(b"HTTP/1.1 200"):
                answered += 1
        except (ConnectionError, ssl.SSLError, OSError):
            pass
    out = {"answered": answered}
elif command == "idle":
    n, seconds = int(args[0]), float(args[1])
    socks = []
    for _ in range(n):
        try:
            socks.append(raw_connection(5))
        except OSError:
            break
    time.sleep(seconds)
    closed = 0
    for c in socks:
        c.setblocking(False)
        try:
            if c.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        c.close()
    out = {"opened": len(socks), "closed_by_server": closed}
elif command == "crowd":
    import concurrent.futures

    n_idle, n_slow, seconds = int(args[0]), int(args[1]), float(args[2])

    def tls(_):
        try:
            return context().wrap_socket(raw_connection(30), server_hostname=host)
        except (ssl.SSLError, OSError):
            return None

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        opened = list(pool.map(tls, range(n_idle + n_slow)))
    idle = [c for c in opened[:n_idle] if c]
    slow = [c for c in opened[n_idle:] if c]
    for c in slow:
        try:
            c.sendall(request_head("/v1/client-tokens", length=1000))
        except (ssl.SSLError, OSError):
            pass
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        for c in slow:
            try:
                c.sendall(b" ")
            except (ssl.SSLError, OSError):
                pass

    def still_open(c):
        c.setblocking(False)
        try:
            c.recv(1)  # an answer (408) or the end of the stream: cut by the server
            return False
        except ssl.SSLWantReadError:
            return True
        except (ssl.SSLError, OSError):
            return False
        finally:
            c.close()

    out = {
        "idle_opened": len(idle),
        "idle_open_at_end": sum(still_open(c) for c in idle),
        "slow_opened": len(slow),
        "slow_open_at_end": sum(still_open(c) for c in slow),
        "refused": opened.count(None),
    }
elif command == "anonymous":
    seconds, threads = float(args[0]), int(args[1])
    counts = {"handshakes": 0, "refused_at_connect": 0}
    lock = threading.Lock()
    ctx = context(with_cert=False)

    def flood():
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            try:
                raw = raw_connection(5)
            except OSError:
                with lock:
                    counts["refused_at_connect"] += 1
                time.sleep(0.01)
                continue
            try:
                s = ctx.wrap_socket(raw, server_hostname=host)
                with lock:
                    counts["handshakes"] += 1
                s.close()
            except (ssl.SSLError, OSError):
                with lock:
                    counts["refused_at_connect"] += 1
                raw.close()

    ts = [threading.Thread(target=flood) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out = counts
else:
    sys.exit(f"unknown command {command}")
print(json.dumps(out), flush=True)
