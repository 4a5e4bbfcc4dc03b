#!/usr/bin/env python3
"""Holds one keep-alive HTTPS connection with a client certificate while something changes on
the server, to show what an open connection and a new one see.

Usage: keepalive.py HOST PORT CA CERT KEY PATH
Prints one JSON line per step: after the first request on the kept connection; then it waits
for a line on standard input; then a second request on the same connection, and one on a new
connection. Each line: {"step", "status", "server_cert_sha256", "same_connection"}."""
import hashlib
import http.client
import json
import socket
import ssl
import sys

host, port, ca, cert, key, path = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3


def connect():
    c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=60)
    c.connect()
    return c


def request(c, step, first_sock):
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    der = c.sock.getpeercert(binary_form=True)
    print(json.dumps({
        "step": step,
        "status": r.status,
        "server_cert_sha256": hashlib.sha256(der).hexdigest(),
        "same_connection": c.sock is first_sock,
    }), flush=True)


kept = connect()
first = kept.sock
request(kept, "before", first)
sys.stdin.readline()
request(kept, "kept", first)
fresh = connect()
request(fresh, "new", first)
