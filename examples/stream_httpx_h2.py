#!/usr/bin/env python3
"""Mass renewal over HTTP/2 with `httpx`: one connection, several batches in flight at once.

    python3 stream_httpx_h2.py --api https://sitesign.example:8443 --ca ca.pem \
        --cert mp.crt --key mp.key renewals.ndjson answers.ndjson

Streams any number of NDJSON request lines through one HTTP/2 connection as batches of at most
--lines-per-batch lines (httpx sends a request's body before it reads the answer, so each batch
stays within sitesign's `[service] max_batch_lines`), --parallel of them at once as HTTP/2
streams (at most `[service] max_batches_per_mp`, default 4). Memory stays bounded on both sides:
the input is read as it is sent and answers are written, in order, as each batch completes.
Retries like batch_requests.py.
"""
import argparse
import asyncio
import json
import sys

import httpx

RETRYABLE = {"unavailable", "audit_unavailable", "backend_error", "rate_limited"}


async def post_batch(client, lines, attempts=5):
    body = b"".join(line + b"\n" for line in lines)
    for _ in range(attempts):
        r = await client.post("/v1/client-tokens:batch", content=body, headers={"content-type": "application/x-ndjson"})
        if r.http_version != "HTTP/2":
            raise RuntimeError(f"the server answered over {r.http_version}, not HTTP/2")
        if r.status_code in (429, 503):
            await asyncio.sleep(int(r.headers.get("retry-after", "5")))
            continue
        r.raise_for_status()
        return [json.loads(x) for x in r.content.splitlines() if x.strip()]
    raise RuntimeError(f"the batch was refused {attempts} times: {r.status_code} {r.text}")


async def answer(client, lines):
    """Answers for `lines`, retrying lines with a retryable error (twice more at most)."""
    answers = await post_batch(client, lines)
    if len(answers) != len(lines):
        raise RuntimeError(f"batch cut after {len(answers) - 1} lines: {answers[-1]}")
    for _ in range(2):
        todo = [i for i, x in enumerate(answers) if "error" in x and x["error"]["code"] in RETRYABLE]
        if not todo:
            break
        for i, x in zip(todo, await post_batch(client, [lines[i] for i in todo])):
            answers[i] = x
    return answers


def batches(path, size):
    with open(path, "rb") as f:
        part = []
        for line in f:
            if line.strip():
                part.append(line.strip())
                if len(part) == size:
                    yield part
                    part = []
        if part:
            yield part


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--api", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--lines-per-batch", type=int, default=10_000)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("input")
    p.add_argument("output")
    a = p.parse_args()
    import ssl

    tls = ssl.create_default_context(cafile=a.ca)
    tls.load_cert_chain(a.cert, a.key)
    limits = httpx.Limits(max_connections=1)
    counts = {"lines": 0, "tokens": 0}
    async with httpx.AsyncClient(base_url=a.api, http1=False, http2=True, verify=tls, limits=limits, timeout=600) as client:
        with open(a.output, "w") as out:
            pending = []
            source = batches(a.input, a.lines_per_batch)
            while True:
                while len(pending) < a.parallel and (part := next(source, None)) is not None:
                    pending.append(asyncio.ensure_future(answer(client, part)))
                if not pending:
                    break
                # In order: the oldest batch's answers are written first.
                for x in await pending.pop(0):
                    out.write(json.dumps(x, separators=(",", ":")) + "\n")
                    counts["lines"] += 1
                    counts["tokens"] += "token" in x
    print(f"{counts['lines']} lines: {counts['tokens']} tokens, {counts['lines'] - counts['tokens']} errors")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
