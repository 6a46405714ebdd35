#!/usr/bin/env python3
"""Parses every exposition in a directory with the reference parsers of Python's
prometheus_client: *.om with the OpenMetrics parser, *.prom with the classic text parser.
Exits 1 naming each file that does not parse. Run by `cargo xtask fuzz`."""
import pathlib
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_classic

failed = 0
count = 0
for path in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    parse = {".om": parse_om, ".prom": parse_classic}.get(path.suffix)
    if parse is None:
        continue
    count += 1
    try:
        families = list(parse(path.read_text(encoding="utf-8")))
        if not families:
            raise ValueError("no metric families")
    except Exception as e:  # any parser error is a failure to report
        failed += 1
        print(f"{path}: {type(e).__name__}: {e}")
print(f"{count - failed} of {count} expositions parse")
sys.exit(1 if failed else 0)
