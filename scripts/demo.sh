#!/usr/bin/env bash
# The one command for a newcomer: installs what is missing (scripts/setup.sh), builds
# Klio and runs `klio demo` (a throwaway PostgreSQL, a Klio server on embedded defaults,
# streaming, a base backup, a point-in-time restore, a verdict, cleanup).
# The first build compiles RocksDB's C++: about 16 minutes on 2 cores; later runs reuse
# the build in $CARGO_TARGET_DIR (default $HOME/.cache/klio-target, shared with .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/klio-target}
source scripts/setup.sh
klio_install_packages
exec cargo run -p klio -- demo "$@"
