"""Parses a Prometheus exposition from stdin with the reference parsers of `prometheus_client` and prints every
sample as one JSON object per line: {"name", "labels", "value"}.

Usage: parse_metrics.py openmetrics|text < exposition
A parse error exits 1 with the parser's message on stderr.
"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as text


def main() -> int:
    parse = {"openmetrics": openmetrics, "text": text}[sys.argv[1]]
    exposition = sys.stdin.read()
    try:
        for family in parse(exposition):
            for sample in family.samples:
                print(json.dumps({"name": sample.name, "labels": sample.labels, "value": sample.value}))
    except Exception as error:  # the parsers raise ValueError and friends
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
