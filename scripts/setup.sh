#!/usr/bin/env bash
# Installs what building Klio and running its demo need, only what is missing
# (idempotent, non-interactive): PostgreSQL 15 server + client tools (the demo's and the
# tests' system PostgreSQL) and clang + libclang (RocksDB's bindgen), and moto's S3
# server for the Tier 2 tests (`klio_install_moto`); the operator's deploy checks add
# kubernetes-validate, helm-python-sdk and cel-python to the same virtualenv. Uses sudo
# when not root. Sourced by .ci/run and scripts/demo.sh; run it alone with
# `bash scripts/setup.sh`.
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

# moto's S3 server (PyPI `moto[server]` >= 5.2.5; earlier 5.2.x answer 500 instead of 412
# to a create-only PUT) for the Tier 2 tests; klio_harness::s3 looks for it in this
# virtualenv first. A virtualenv and not `pip install --break-system-packages`: Debian's
# Python refuses system-wide pip installs (PEP 668), and forcing one could replace
# Python packages that apt installed and manages. Debian's own python3 builds it, so it
# does not depend on whichever python3 comes first on PATH.
KLIO_VENV="$HOME/.cache/klio-venv"
klio_install_moto() {
    if [[ -x "$KLIO_VENV/bin/moto_server" ]] && "$KLIO_VENV/bin/python" -c '
import re, sys
from importlib.metadata import version
sys.exit([int(x) for x in re.findall(r"\d+", version("moto"))[:3]] < [5, 2, 5])' 2>/dev/null; then
        return 0
    fi
    klio_install_packages python3-venv
    echo "setup: installing moto[server]>=5.2.5 into $KLIO_VENV"
    /usr/bin/python3 -m venv "$KLIO_VENV"
    "$KLIO_VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5.2.5'
}

# kubernetes-validate (PyPI), which checks the operator's manifests offline against the
# Kubernetes schemas; into the same virtualenv as moto.
klio_install_kubernetes_validate() {
    if [[ -x "$KLIO_VENV/bin/kubernetes-validate" ]]; then
        return 0
    fi
    klio_install_moto
    echo "setup: installing kubernetes-validate into $KLIO_VENV"
    "$KLIO_VENV/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate
    # Installed but its script gone: put it back.
    if [[ ! -x "$KLIO_VENV/bin/kubernetes-validate" ]]; then
        "$KLIO_VENV/bin/pip" install --quiet --disable-pip-version-check \
            --force-reinstall --no-deps kubernetes-validate
    fi
}

# The virtualenv alone, for tools that do not need moto (made as klio_install_moto makes it).
klio_venv() {
    if [[ -x "$KLIO_VENV/bin/pip" ]]; then
        return 0
    fi
    klio_install_packages python3-venv
    /usr/bin/python3 -m venv "$KLIO_VENV"
}

# helm-python-sdk (PyPI; Helm's Go SDK behind a C ABI, inside the wheel: no helm binary)
# for scripts/helm-render.py, which renders and lints deploy/helm/klio-operator offline.
klio_install_helm_renderer() {
    if [[ -x "$KLIO_VENV/bin/python" ]] && "$KLIO_VENV/bin/python" -c 'import helm_python, yaml' 2>/dev/null; then
        return 0
    fi
    klio_venv
    echo "setup: installing helm-python-sdk into $KLIO_VENV"
    "$KLIO_VENV/bin/pip" install --quiet --disable-pip-version-check \
        'helm-python-sdk>=0.2.2,<0.3' pyyaml
}

# cel-python (PyPI, pure Python CEL) for scripts/crd-cel-check.py, which evaluates the
# CRD's x-kubernetes-validations rules on Servers offline.
klio_install_cel() {
    if [[ -x "$KLIO_VENV/bin/python" ]] && "$KLIO_VENV/bin/python" -c 'import celpy, yaml' 2>/dev/null; then
        return 0
    fi
    klio_venv
    echo "setup: installing cel-python into $KLIO_VENV"
    "$KLIO_VENV/bin/pip" install --quiet --disable-pip-version-check \
        'cel-python>=0.5,<0.6' pyyaml
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    klio_install_packages "$@"
    klio_install_moto
fi
