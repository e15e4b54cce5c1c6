#!/usr/bin/env python3
"""Parses an OpenMetrics text exposition from stdin with the Prometheus
project's own Python parser (prometheus-client, installed by
scripts/setup.sh) and prints every sample as JSON: a parse error fails."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append(
            {"family": family.name, "type": family.type, "name": s.name,
             "labels": s.labels, "value": s.value}
        )
json.dump(samples, sys.stdout)
