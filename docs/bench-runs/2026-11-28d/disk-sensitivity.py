#!/usr/bin/env python3
"""How each arm's p99 moves with the disk, round by round.

Reads the "medians (rounds in order)" block of a klio-bench-sync output (a curve, with
per-client-count keys such as c4_p99_ms, or a probe, with plain keys) and prints, for
every arm, the least-squares slope of its p99 against the primary's own WAL fsync time
in the same phase (`primary_sync_us`, from pg_stat_wal: a measure of how slow the shared
disk was while that arm ran), the correlation, and the range of the fsync time. Then
the rank correlation of Klio's round-by-round p99 ratio (over PEER) with each arm's
fsync time.

usage: disk-sensitivity.py OUTPUT [PREFIX] [PEER]
  PREFIX: c4_ for a curve's 4-client keys (default: none, a probe)
  PEER:   default "pg_receivewal --synchronous"
"""
import re
import statistics as st
import sys


def arms_of(path, prefix):
    lines = open(path).read().splitlines()
    start = [k for k, l in enumerate(lines) if "medians (rounds in order)" in l][0]
    arms = {}
    for line in lines[start + 1:start + 9]:
        m = re.match(r"\s+(.+?)\s{2,}(?:c\d+_)?tps=", line) or re.match(r"\s+(.+?)\s+tps=", line)
        if not m:
            continue
        vals = {
            k[len(prefix):]: [float(x) for x in v.split()]
            for k, v in re.findall(r" ([a-z0-9_]+)=[0-9.]+ \(([0-9. ]+)\)", line)
            if k.startswith(prefix)
        }
        if "p99_ms" in vals and "primary_sync_us" in vals:
            arms[m.group(1).strip()] = vals
    return arms


def ranks(v):
    order = sorted(range(len(v)), key=lambda j: v[j])
    r = [0] * len(v)
    for pos, j in enumerate(order):
        r[j] = pos
    return r


def main():
    path = sys.argv[1]
    prefix = sys.argv[2] if len(sys.argv) > 2 else ""
    peer = sys.argv[3] if len(sys.argv) > 3 else "pg_receivewal --synchronous"
    arms = arms_of(path, prefix)
    print(path)
    for name, d in arms.items():
        x, y = d["primary_sync_us"], d["p99_ms"]
        mx, my = st.mean(x), st.mean(y)
        slope = sum((p - mx) * (q - my) for p, q in zip(x, y)) / sum((p - mx) ** 2 for p in x)
        print(
            f"  {name:45s} p99 per primary fsync: {slope * 1000:5.1f} us/us, "
            f"r={st.correlation(x, y):+.2f}, fsync {min(x):.0f}-{max(x):.0f} us"
        )
    if "klio" in arms and peer in arms:
        ratio = [a / b for a, b in zip(arms["klio"]["p99_ms"], arms[peer]["p99_ms"])]
        for name, d in arms.items():
            rc = st.correlation(ranks(ratio), ranks(d["primary_sync_us"]))
            print(f"  rank correlation of klio/{peer} p99 with {name}'s fsync time: {rc:+.2f}")


if __name__ == "__main__":
    main()
