"""Schemathesis hooks for sitesign's API (loaded with SCHEMATHESIS_HOOKS).

The batch endpoint's body and answer are NDJSON: the OpenAPI document describes each as an
array whose items are its lines. These teach Schemathesis to write such an array as NDJSON and
to read an NDJSON answer back into one, so both are generated and checked against the schema.
"""
import json

import schemathesis

NDJSON = ("application/x-ndjson",)


@schemathesis.serializer(*NDJSON)
def to_ndjson(ctx, value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, list):
        # Negative testing sends what the schema forbids: one JSON text then.
        return json.dumps(value).encode() + b"\n"
    return b"".join(json.dumps(item, separators=(",", ":")).encode() + b"\n" for item in value)


@schemathesis.deserializer(*NDJSON)
def from_ndjson(ctx, response):
    return [json.loads(line) for line in response.content.splitlines() if line.strip()]


def _line_validator():
    import os

    import jsonschema

    with open(os.environ["SITESIGN_OPENAPI"]) as f:
        doc = json.load(f)
    schema = {"$ref": "#/components/schemas/ClientTokenRequest", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


_LINE = None


@schemathesis.check
def batch_answers_every_line(ctx, response, case):
    """A batch's answer has one line per request line, and every line the document forbids is
    answered with an error."""
    global _LINE
    if case.operation.path != "/v1/client-tokens:batch" or response.status_code != 200:
        return None
    if _LINE is None:
        _LINE = _line_validator()
    sent = case.body if isinstance(case.body, list) else [case.body]
    answers = [json.loads(x) for x in response.content.splitlines() if x.strip()]
    if len(answers) != len(sent):
        raise AssertionError(f"{len(sent)} lines sent, {len(answers)} answered")
    for i, (line, answer) in enumerate(zip(sent, answers)):
        if not _LINE.is_valid(line) and "error" not in answer:
            raise AssertionError(f"line {i} breaks the schema and was answered {answer}")
    return True
