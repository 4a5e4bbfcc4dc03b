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
  idle N SECONDS           N TCP connections that send nothing, held SECONDS:
                           {"opened", "closed_by_server"}
  anonymous SECONDS THREADS
                           TLS handshakes without a client certificate, back to back, from
                           THREADS threads for SECONDS: {"handshakes", "refused_at_connect"} —
                           each completed handshake made the server's device sign once

HOSTILE_SOURCES (comma-separated loopback addresses, e.g. 127.0.0.2,127.0.0.3) makes `idle`
and `anonymous` connect from those addresses in turn, so an attacker is not the management
point's own address.
"""
import itertools
import os
import json
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


def read_response(sock, deadline=120):
    """Reads one HTTP/1.1 response: (status, headers, body, closed). Handles content-length,
    chunked and read-to-close bodies."""
    sock.settimeout(deadline)
    data = b""
    closed = False
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except (ConnectionError, ssl.SSLError, socket.timeout):
            chunk = b""
        if not chunk:
            return 0, {}, b"", True
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}

    def more():
        try:
            return sock.recv(65536)
        except (ConnectionError, ssl.SSLError, socket.timeout):
            return b""

    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n:
            chunk = more()
            if not chunk:
                closed = True
                break
            rest += chunk
        body = rest[:n]
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                chunk = more()
                if not chunk:
                    return status, headers, body, True
                rest += chunk
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                chunk = more()
                if not chunk:
                    return status, headers, body + rest, True
                rest += chunk
            body += rest[:size]
            rest = rest[size + 2:]
            if size == 0:
                break
    else:
        body = rest
        while True:
            chunk = more()
            if not chunk:
                break
            body += chunk
        closed = True
    if not closed:
        # Does the server close the connection now (it should, after refusing a body)?
        sock.settimeout(2)
        try:
            closed = sock.recv(1) == b""
        except socket.timeout:
            closed = False
        except (ConnectionError, ssl.SSLError):
            closed = True
    return status, headers, body, closed


def request_head(path, length=None, chunked=False):
    h = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
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
    s.sendall(request_head(path, 1000))
    sent = 0
    result = {}

    def reader():
        status, _, body, closed = read_response(s, deadline=seconds + 30)
        result.update(status=status, code=error_code(body), closed=closed, seconds=time.monotonic() - started)

    t = threading.Thread(target=reader)
    t.start()
    while t.is_alive() and sent < 1000 and time.monotonic() - started < seconds:
        try:
            s.sendall(b" ")
            sent += 1
        except (ConnectionError, ssl.SSLError, OSError):
            break
        time.sleep(1)
    t.join(seconds + 30)
    result["sent"] = sent
    return result


def stall_single(path):
    s = connect()
    started = time.monotonic()
    s.sendall(request_head(path, 1000) + b'{"device_id": ')
    status, _, body, closed = read_response(s)
    return {"status": status, "code": error_code(body), "closed": closed, "seconds": time.monotonic() - started}


def batch(send):
    """Sends a chunked batch with `send(sock)` on a thread while reading the response."""
    s = connect()
    started = time.monotonic()
    s.sendall(request_head("/v1/client-tokens:batch", chunked=True))
    sender = threading.Thread(target=send, args=(s,), daemon=True)
    sender.start()
    status, _, body, closed = read_response(s, deadline=600)
    return {"status": status, "lines": ndjson(body) if status == 200 else [], "code": error_code(body),
            "closed": closed, "seconds": time.monotonic() - started}


def quiet(f):
    def g(*a):
        try:
            f(*a)
        except (ConnectionError, ssl.SSLError, OSError):
            pass
    return g


if command == "trickle":
    out = trickle_single(args[0], float(args[1]))
elif command == "stall":
    out = stall_single(args[0])
elif command == "batch-stall":
    line = args[0].encode()
    out = batch(quiet(lambda s: s.sendall(chunk(line + b"\n") + chunk(line[: len(line) // 2]))))
elif command == "batch-trickle":
    limit = float(args[0])

    @quiet
    def send(s):
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            s.sendall(chunk(b" "))
            time.sleep(1)
    out = batch(send)
elif command == "batch-file":
    path = args[0]

    @quiet
    def send(s):
        with open(path, "rb") as f:
            while True:
                data = f.read(65536)
                if not data:
                    break
                s.sendall(chunk(data))
        s.sendall(b"0\r\n\r\n")
    out = batch(send)
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
