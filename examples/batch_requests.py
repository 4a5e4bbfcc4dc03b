#!/usr/bin/env python3
"""Mass renewal with Python `requests`: send each batch whole, then read its answer (half duplex).

    python3 batch_requests.py --api https://sitesign.example:8443 --ca ca.pem \
        --cert mp.crt --key mp.key renewals.ndjson answers.ndjson

Reads NDJSON requests (one `POST /v1/client-tokens` body per line), sends them in batches of at
most --lines-per-batch lines (sitesign's `[service] max_batch_lines`, default 10,000: the most a
client that sends before it reads may send in one batch), and writes one answer line per request
line, in order. Retries what docs/api.md says is safe to retry: a whole batch answered 429 or
503 after its Retry-After, and lines answered `unavailable`, `audit_unavailable`,
`backend_error` or `rate_limited` in a later batch (a retried line gets a new token; nothing
issued before is lost). Exits 1 if a line still has a retryable error at the end.
"""
import argparse
import json
import sys
import time

import requests

RETRYABLE = {"unavailable", "audit_unavailable", "backend_error", "rate_limited"}


def post_batch(session, url, ca, lines, attempts=5):
    """One batch, sent whole; its answer lines (or raises)."""
    body = b"".join(line + b"\n" for line in lines)
    for _ in range(attempts):
        # `verify` on the request: REQUESTS_CA_BUNDLE in the environment would override the
        # session's.
        r = session.post(url, data=body, headers={"content-type": "application/x-ndjson"}, verify=ca, timeout=600)
        if r.status_code in (429, 503):
            time.sleep(int(r.headers.get("retry-after", "5")))
            continue
        r.raise_for_status()
        return [json.loads(x) for x in r.content.splitlines() if x.strip()]
    raise RuntimeError(f"the batch was refused {attempts} times: {r.status_code} {r.text}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--api", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--lines-per-batch", type=int, default=10_000)
    p.add_argument("input")
    p.add_argument("output")
    a = p.parse_args()
    with open(a.input, "rb") as f:
        requests_ = [line.strip() for line in f if line.strip()]
    answers = [None] * len(requests_)
    session = requests.Session()
    session.cert = (a.cert, a.key)
    url = a.api.rstrip("/") + "/v1/client-tokens:batch"
    todo = list(range(len(requests_)))
    for _ in range(3):
        for start in range(0, len(todo), a.lines_per_batch):
            part = todo[start : start + a.lines_per_batch]
            got = post_batch(session, url, a.ca, [requests_[i] for i in part])
            for i, answer in zip(part, got):
                answers[i] = answer
            if len(got) != len(part):
                # The batch was cut (its last line says why): what was not answered is not retried.
                print(f"batch cut after {len(got) - 1} lines: {got[-1]}", file=sys.stderr)
                sys.exit(2)
        todo = [i for i, x in enumerate(answers) if "error" in x and x["error"]["code"] in RETRYABLE]
        if not todo:
            break
    with open(a.output, "w") as f:
        for x in answers:
            f.write(json.dumps(x, separators=(",", ":")) + "\n")
    tokens = sum(1 for x in answers if "token" in x)
    print(f"{len(answers)} lines: {tokens} tokens, {len(answers) - tokens} errors")
    sys.exit(1 if todo else 0)


if __name__ == "__main__":
    main()
