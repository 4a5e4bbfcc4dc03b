#!/usr/bin/env python3
"""The attacks of the hardening issue, measured against a release sitesignd on loopback.

Usage: python3 benches/attacks.py --bin DIR [--only NAME,...]
DIR holds release `sitesign` and `sitesignd` (target/release, or an older build's, to compare).
Each scenario gets a fresh quickstart appliance (SoftHSM, RS256) and a fresh sitesignd, runs one
attack from 127.0.0.2 (or as the demo MP, for the MP's own attacks) while a legitimate MP works
from 127.0.0.1, and reports what the service spent and what the legitimate MP saw. Prints one
JSON object per scenario, then a summary line. Needs root (loopback source addresses, prlimit).

Scenarios:
  idle       1,100 idle TCP connections with the unit's old descriptor limit (1,024): service
             CPU, log bytes, legitimate requests on new connections (ok / failed, p50)
  anonymous  TLS handshakes without a client certificate from 4 processes x 8 threads: device
             signatures a second granted to them, legitimate single-request p50 meanwhile
  trickle    a body sent one byte a second: seconds until the service cuts it (70 s at most)
  batch      a 5,000-line batch from an MP limited to 1 request a second: lines signed in 15 s
  newlines   four 16 MiB batches of newlines at once: service CPU, legitimate p50 meanwhile
  nodelay    200 requests, each on a new connection from a client that leaves Nagle's algorithm
             on: p50, p99, how many took over 40 ms (Nagle against delayed ACKs)
"""
import argparse
import http.client
import json
import os
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ROOT / "provisioning/tests/tools/hostile.py"
PY = str(ROOT / "target/pytools/bin/python") if (ROOT / "target/pytools/bin/python").exists() else sys.executable


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Appliance:
    def __init__(self, bins, service_extra=""):
        self.bins = bins
        self.tmp = tempfile.TemporaryDirectory(prefix="sitesign-attacks-")
        self.dir = Path(self.tmp.name) / "appliance"
        self.port = free_port()
        self.ops = free_port()
        made = subprocess.run(
            [str(bins / "sitesign"), "quickstart", "--json", "--dir", str(self.dir),
             "--listen", f"127.0.0.1:{self.port}", "--ops-listen", f"127.0.0.1:{self.ops}"],
            capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"})
        if made.returncode != 0:
            sys.exit(f"quickstart failed: {made.stdout}{made.stderr}")
        config = self.dir / "sitesign.toml"
        text = config.read_text()
        if service_extra:
            text = text.replace("[service]\n", "[service]\n" + service_extra, 1)
        config.write_text(text)
        self.log = self.dir / "sitesignd.log"
        self.proc = subprocess.Popen(
            [str(bins / "sitesignd"), "--config", str(config), "--allow-root"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"),
            env={k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"})
        deadline = time.time() + 60
        while "sitesignd ready" not in self.log.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                sys.exit(f"sitesignd did not start: {self.log.read_text()}")
            time.sleep(0.1)
        self.ctx = ssl.create_default_context(cafile=str(self.dir / "ca.pem"))
        self.ctx.load_cert_chain(str(self.dir / "mp/mp.crt"), str(self.dir / "mp/mp.key"))
        self.ctx.check_hostname = False

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.tmp.cleanup()

    def cpu(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_bytes(self):
        return self.log.stat().st_size

    def metric(self, name):
        body = self.get_ops("/metrics")
        return sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines()
                   if l.startswith(name) and not l.startswith("#") and (l[len(name)] in " {"))

    def get_ops(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.ops, timeout=30)
        c.request("GET", path)
        return c.getresponse().read().decode()

    def connection(self, nodelay=True):
        c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)
        c.connect()
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if nodelay else 0)
        return c

    def hostile(self, command, *args, sources=None, background=False):
        env = dict(os.environ)
        if sources:
            env["HOSTILE_SOURCES"] = sources
        cmd = [PY, str(HOSTILE), command, "127.0.0.1", str(self.port), str(self.dir / "ca.pem"),
               str(self.dir / "mp/mp.crt"), str(self.dir / "mp/mp.key"), *args]
        if background:
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {"error": out.stderr[-500:]}


def request(app, conn, n):
    body = json.dumps({"device_id": f"GUID:{n:08X}-0000-4000-8000-000000000000",
                       "client_cert_thumbprint": "A" * 43, "proof": {"kind": "internal"}})
    conn.request("POST", "/v1/client-tokens", body, {"content-type": "application/json"})
    r = conn.getresponse()
    r.read()
    return r.status


class Prober(threading.Thread):
    """A legitimate MP: one request every `every` seconds, on a kept-alive connection or a new
    connection each time; records latencies and failures."""

    def __init__(self, app, new_connections, every=0.1):
        super().__init__(daemon=True)
        self.app, self.new, self.every = app, new_connections, every
        self.latencies, self.failures, self.stop = [], 0, threading.Event()

    def run(self):
        conn, n = None, 0
        while not self.stop.is_set():
            n += 1
            t = time.monotonic()
            try:
                if conn is None or self.new:
                    conn = self.app.connection()
                status = request(self.app, conn, 1_000_000 + n)
                if status == 200:
                    self.latencies.append((time.monotonic() - t) * 1000)
                else:
                    self.failures += 1
            except Exception:
                self.failures += 1
                conn = None
            if self.new and conn is not None:
                conn.close()
            self.stop.wait(self.every)

    def report(self):
        self.stop.set()
        self.join(60)
        lat = sorted(self.latencies)
        return {"ok": len(lat), "failed": self.failures,
                "p50_ms": round(statistics.median(lat), 1) if lat else None,
                "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 1) if len(lat) >= 100 else (round(lat[-1], 1) if lat else None)}


def baseline(app, new_connections):
    p = Prober(app, new_connections, every=0.05)
    p.start()
    time.sleep(5)
    return p.report()


def scenario_idle(bins):
    app = Appliance(bins)
    try:
        subprocess.run(["prlimit", "--pid", str(app.proc.pid), "--nofile=1024:1024"], check=True)
        base = baseline(app, True)
        cpu, log = app.cpu(), app.log_bytes()
        attack = app.hostile("idle", "1100", "25", sources="127.0.0.2", background=True)
        time.sleep(2)
        probe = Prober(app, True, every=0.2)
        probe.start()
        time.sleep(20)
        during = probe.report()
        cpu_used, log_used = app.cpu() - cpu, app.log_bytes() - log
        attack.wait(120)
        return {"scenario": "idle", "idle_connections": 1100, "service_cpu_percent": round(cpu_used / 20 * 100),
                "log_bytes": log_used, "legit_new_connection_baseline": base, "legit_new_connection_during": during}
    finally:
        app.close()


def scenario_anonymous(bins):
    app = Appliance(bins)
    try:
        base = baseline(app, False)
        before = app.metric("sitesign_tls_handshake_signatures_total")
        t0 = time.monotonic()
        floods = [app.hostile("anonymous", "15", "8", sources="127.0.0.2", background=True) for _ in range(4)]
        time.sleep(2)
        probe = Prober(app, False, every=0.05)
        probe.start()
        time.sleep(12)
        during = probe.report()
        for f in floods:
            f.wait(60)
        seconds = time.monotonic() - t0
        granted = app.metric("sitesign_tls_handshake_signatures_total") - before
        return {"scenario": "anonymous", "anonymous_device_signatures_per_s": round(granted / seconds, 1),
                "legit_baseline": base, "legit_during": during}
    finally:
        app.close()


def scenario_trickle(bins):
    app = Appliance(bins)
    try:
        r = app.hostile("trickle", "/v1/client-tokens", "70")
        return {"scenario": "trickle", "held_seconds": round(r.get("seconds", 70), 1), "status": r.get("status"),
                "code": r.get("code")}
    finally:
        app.close()


def scenario_batch(bins):
    app = Appliance(bins, "rate_limit_per_second = 1\nrate_limit_burst = 1\n")
    try:
        body = app.dir / "batch.ndjson"
        with open(body, "w") as f:
            for n in range(5000):
                f.write(json.dumps({"device_id": f"GUID:{n:08X}-0000-4000-8000-000000000000",
                                    "client_cert_thumbprint": "A" * 43, "proof": {"kind": "internal"}}) + "\n")
        out = subprocess.run(["curl", "-sS", "--max-time", "15", "--cacert", str(app.dir / "ca.pem"),
                              "--cert", str(app.dir / "mp/mp.crt"), "--key", str(app.dir / "mp/mp.key"),
                              "-X", "POST", "-H", "content-type: application/x-ndjson", "-T", str(body),
                              f"https://127.0.0.1:{app.port}/v1/client-tokens:batch"],
                             capture_output=True, text=True)
        signed = sum(1 for l in out.stdout.splitlines() if l.startswith('{"token"'))
        return {"scenario": "batch", "rate_limit_per_s": 1, "lines": 5000, "signed_in_15_s": signed}
    finally:
        app.close()


def scenario_newlines(bins):
    app = Appliance(bins)
    try:
        flood = app.dir / "newlines.ndjson"
        flood.write_bytes(b"\n" * (16 << 20))
        base = baseline(app, False)
        cpu = app.cpu()
        t0 = time.monotonic()
        attacks = [app.hostile("batch-file", str(flood), background=True) for _ in range(4)]
        probe = Prober(app, False, every=0.02)
        probe.start()
        for a in attacks:
            a.wait(300)
        seconds = time.monotonic() - t0
        during = probe.report()
        return {"scenario": "newlines", "mib": 64, "service_cpu_seconds": round(app.cpu() - cpu, 2),
                "attack_seconds": round(seconds, 1), "legit_baseline": base, "legit_during": during}
    finally:
        app.close()


def scenario_nodelay(bins):
    app = Appliance(bins)
    try:
        lat = []
        for n in range(200):
            # A client that leaves Nagle's algorithm on, as many do: only the server's side decides.
            c = app.connection(nodelay=False)
            t = time.monotonic()
            status = request(app, c, n)
            lat.append((time.monotonic() - t) * 1000)
            c.close()
            assert status == 200, status
            time.sleep(0.06)  # 15 new connections a second: within one source's handshake rate
        lat.sort()
        return {"scenario": "nodelay", "requests": 200, "p50_ms": round(lat[100], 1), "p99_ms": round(lat[197], 1),
                "over_40_ms": sum(1 for x in lat if x > 40)}
    finally:
        app.close()


SCENARIOS = {"idle": scenario_idle, "anonymous": scenario_anonymous, "trickle": scenario_trickle,
             "batch": scenario_batch, "newlines": scenario_newlines, "nodelay": scenario_nodelay}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path, default=ROOT / "target/release")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    results = []
    for name in args.only.split(","):
        r = SCENARIOS[name](args.bin.resolve())
        print(json.dumps(r), flush=True)
        results.append(r)


if __name__ == "__main__":
    main()
