#!/bin/bash
# A journaled ext4 (the default: data=ordered) on a loop device over a file on this disk,
# with direct I/O on the loop device so that flushes reach the disk.
set -euo pipefail
img=${IMG:-/var/tmp/klio-jext4.img}
mnt=${MNT:-/mnt/klio-jext4}
truncate -s 24G "$img"
mkfs.ext4 -q -F "$img"
dev=$(losetup --find --show --direct-io=on "$img")
mkdir -p "$mnt"
mount "$dev" "$mnt"
chmod 1777 "$mnt"
echo "$dev $mnt"; dumpe2fs -h "$dev" 2>/dev/null | grep -i "features\|journal size"; cat /sys/block/$(basename $dev)/queue/write_cache
