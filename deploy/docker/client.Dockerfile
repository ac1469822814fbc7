# syntax=docker/dockerfile:1
# The lean client image: `klio` built without its default `server` feature (no
# RocksDB, no C++), for PostgreSQL pods' `restore_command = 'klio wal-restore %f %p'`
# and `klio restore`. PostgreSQL images take the binary from it, e.g. in a
# CloudNativePG operand image:
#
#   FROM ghcr.io/cloudnative-pg/postgresql:17
#   COPY --from=klio-client:0.1.0 /usr/local/bin/klio /usr/local/bin/klio
#
# or run it as is (entrypoint `klio`). Built on Debian 12 (glibc 2.36): it runs on
# Debian 12 and newer PostgreSQL images.
#
#   docker build -f deploy/docker/client.Dockerfile -t klio-client:0.1.0 .
#
# Not built in Klio's CI or development machines (they have no Docker); a test
# (operator/tests/deploy.rs) checks that this build's dependency graph has no RocksDB.

FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p klio --no-default-features --bin klio \
 && install -D -m 0755 target/release/klio /out/klio

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/klio /usr/local/bin/klio
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/klio"]
CMD ["--help"]
