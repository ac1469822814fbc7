#!/usr/bin/env python3
"""Klio's round-by-round latency ratio against pg_receivewal (or the named peer), split
by how busy the host was in that round: rounds ordered by the same figure of the "no
synchronous standby" arm, lower half ("quiet") against upper half ("busy").

usage: split-by-host.py CURVE_OUTPUT METRIC [PEER] [ARM]
  e.g. split-by-host.py curve-c4-16-64-16rounds.out c4_p99_ms"""
import re
import sys


def rounds(summary, arm, metric):
    line = next(l for l in summary.splitlines() if l.strip().startswith(arm))
    m = re.search(re.escape(metric) + r"=\S+ \(([^)]*)\)", line)
    return [float(x) for x in m.group(1).split()]


def median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


path, metric = sys.argv[1], sys.argv[2]
peer = sys.argv[3] if len(sys.argv) > 3 else "pg_receivewal --synchronous"
arm = sys.argv[4] if len(sys.argv) > 4 else "klio "
text = open(path).read()
summary = text[text.index("medians (rounds in order)"):]
host = rounds(summary, "no synchronous standby", metric)
ratios = [k / p for k, p in zip(rounds(summary, arm, metric), rounds(summary, peer, metric))]
by_host = [r for _, r in sorted(zip(host, ratios))]
half = len(by_host) // 2
quiet, busy = by_host[:half], by_host[len(by_host) - half:]
print(f"{metric}, {arm.strip()} / {peer}, {len(ratios)} rounds")
print(f"  quiet half: median {median(quiet):.2f}x ({' '.join(f'{r:.2f}' for r in quiet)})")
print(f"  busy half:  median {median(busy):.2f}x ({' '.join(f'{r:.2f}' for r in busy)})")
