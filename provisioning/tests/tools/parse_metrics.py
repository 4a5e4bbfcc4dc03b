#!/usr/bin/env python3
"""Parses a Prometheus text exposition (standard input) with prometheus_client's own parser and
prints every family as JSON: {name: {"type": T, "samples": [[sample name, labels, value], ...]}}.
A malformed exposition makes the parser (and this script) fail."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
print(json.dumps(out))
