#!/usr/bin/env bash
# Installs what building Klio and running its demo need, only what is missing
# (idempotent, non-interactive): PostgreSQL 15 server + client tools (the demo's and the
# tests' system PostgreSQL) and clang + libclang (RocksDB's bindgen). Uses sudo when not
# root. Sourced by .ci/run and scripts/demo.sh; run it alone with `bash scripts/setup.sh`.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

klio_sudo() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# Debian packages to install if missing; extra names may be passed as arguments.
klio_install_packages() {
    local missing=()
    for pkg in postgresql-15 postgresql-client-15 clang libclang-dev "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    echo "setup: installing ${missing[*]}"
    # Installing postgresql-15 would otherwise create and start a default cluster on 5432.
    if [[ ! -e /etc/postgresql-common/createcluster.conf ]]; then
        klio_sudo mkdir -p /etc/postgresql-common
        echo 'create_main_cluster = false' |
            klio_sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    klio_sudo apt-get update -qq
    klio_sudo apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    klio_install_packages "$@"
fi
