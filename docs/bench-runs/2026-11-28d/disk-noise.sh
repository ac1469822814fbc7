#!/bin/bash
# Disk noise: 2 MiB written directly and flushed, ten times a second, on the same disk.
f=${1:-/var/tmp/klio-noise}
trap 'rm -f "$f"' EXIT
while true; do
  dd if=/dev/zero of="$f" bs=1M count=2 oflag=direct conv=fdatasync status=none
  sleep 0.1
done
