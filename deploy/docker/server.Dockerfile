# syntax=docker/dockerfile:1
# The Klio Server image: `klio` with the server (RocksDB), entrypoint `klio`, so the
# operator's `server --config /etc/klio/klio.toml` arguments run `klio server ...`.
# Runs as uid/gid 65532 (distroless `nonroot`, operator/src/resources.rs RUN_AS) with a
# read-only root filesystem: the pod mounts /tmp, its configuration, its Secrets and
# Tier 1 (/var/lib/klio).
#
#   docker build -f deploy/docker/server.Dockerfile -t klio:0.1.0 .
#
# Not built in Klio's CI or development machines (they have no Docker): kept correct by
# reading the workspace (Cargo.toml, rust-toolchain.toml, cli/Cargo.toml's `server`
# feature), not by a build.

# The toolchain rust-toolchain.toml pins; Debian 12, as the runtime image.
FROM rust:1.95.0-bookworm AS builder
# RocksDB: bindgen needs libclang, its C++ needs clang/g++ (build-essential is in the image).
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Every workspace member's manifest must be present for cargo to load the workspace.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p klio --bin klio \
 && install -D -m 0755 target/release/klio /out/klio

# glibc, libgcc and libstdc++ (RocksDB's C++), CA certificates, user nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/klio /usr/local/bin/klio
USER 65532:65532
# API (HTTPS or HTTP) and plain-HTTP /metrics, as the operator's Service exposes them.
EXPOSE 7070 9187
ENTRYPOINT ["/usr/local/bin/klio"]
CMD ["--help"]
