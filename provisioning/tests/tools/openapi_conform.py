"""Sends requests to a running sitesignd and checks every answer against the OpenAPI document:
the path and method are described, the status is one the operation documents, the media type
is the one it documents for that status, the body validates against its schema (JSON; NDJSON
line by line), and documented headers that say when to retry or what is allowed are present.

    python openapi_conform.py DOC BASE_URL CA CERT KEY < requests.ndjson

Each input line: {"method", "path", "content_type"?, "body"? (text), "repeat"? (n)}.
Prints {"checked", "seen": ["STATUS CODE", …], "failures": […]} as one JSON line.
"""
import json
import sys
import urllib.parse

import jsonschema
import requests

doc_path, base, ca, cert, key = sys.argv[1:6]
doc = json.load(open(doc_path))


def resolve(node):
    while isinstance(node, dict) and "$ref" in node:
        target = doc
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def validator(schema):
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


session = requests.Session()
session.cert = (cert, key)
checked, seen, failures = 0, set(), []
for line in sys.stdin:
    if not line.strip():
        continue
    req = json.loads(line)
    for _ in range(req.get("repeat", 1)):
        headers = {"content-type": req["content_type"]} if "content_type" in req else {}
        r = session.request(req["method"], base + req["path"], data=req.get("body"), headers=headers, verify=ca, timeout=120)
        checked += 1
        where = f'{req["method"]} {req["path"]} → {r.status_code}'
        fail = lambda why: failures.append(f"{where}: {why}")
        path = urllib.parse.urlsplit(req["path"]).path
        code = ""
        try:
            body = r.json()
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                code = body["error"].get("code", "")
        except ValueError:
            pass
        seen.add(f"{r.status_code} {code}".strip())
        item = doc["paths"].get(path)
        if item is None:
            if r.status_code != 404 or code != "not_found":
                fail("an undocumented path must answer 404 not_found")
            continue
        op = item.get(req["method"].lower())
        if op is None:
            allow = {m.strip() for m in r.headers.get("allow", "").split(",")}
            documented = {m.upper() for m in item}
            if r.status_code != 405 or code != "method_not_allowed" or not documented <= allow:
                fail(f"an undocumented method must answer 405 with Allow ⊇ {sorted(documented)}; Allow: {r.headers.get('allow')}")
            continue
        response = op["responses"].get(str(r.status_code)) or op["responses"].get("default")
        if response is None:
            fail(f"status not documented (documented: {sorted(op['responses'])})")
            continue
        response = resolve(response)
        for name in response.get("headers", {}):
            if name.lower() in ("retry-after", "allow") and name not in r.headers:
                fail(f"header {name} documented but missing")
        media = r.headers.get("content-type", "").split(";")[0].strip()
        content = response.get("content", {})
        if media not in content:
            fail(f"content type {media!r} not documented ({sorted(content)})")
            continue
        schema = content[media].get("schema")
        if media == "application/json":
            instance = r.json()
        elif media == "application/x-ndjson":
            instance = [json.loads(x) for x in r.content.splitlines() if x.strip()]
        else:
            continue
        errors = sorted(validator(schema).iter_errors(instance), key=lambda e: e.path)
        if errors:
            fail(f"body does not match the schema: {errors[0].message} at {list(errors[0].absolute_path)}")
print(json.dumps({"checked": checked, "seen": sorted(seen), "failures": failures}))
