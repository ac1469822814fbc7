# syntax=docker/dockerfile:1
# The operator image: `klio-operator` (operator/src/main.rs), which uses the lean
# klio-api client and so builds without RocksDB or a C++ toolchain, and
# `klio-cnpg-plugin` (cnpg-plugin/: the CloudNativePG plugin's operator side and its
# sidecars, deploy/cnpg-plugin/; its .proto files compile with protox, no protoc).
# Runs as 65532 with a read-only root filesystem (deploy/base/deployment.yaml); HTTP
# /metrics, /healthz and /readyz on 8080 (KLIO_OPERATOR_LISTEN). As the plugin's sidecar
# (command /usr/local/bin/klio-cnpg-plugin), it runs as the Pod's PostgreSQL user.
#
#   docker build -f deploy/docker/operator.Dockerfile -t klio-operator:0.1.0 .
#
# Not built in Klio's CI or development machines (they have no Docker): kept correct by
# reading the workspace's Cargo.toml, operator/Cargo.toml and cnpg-plugin/Cargo.toml,
# not by a build.

FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p klio-operator --bin klio-operator \
        -p klio-cnpg-plugin --bin klio-cnpg-plugin \
 && install -D -m 0755 target/release/klio-operator /out/klio-operator \
 && install -D -m 0755 target/release/klio-cnpg-plugin /out/klio-cnpg-plugin

# rustls with webpki roots: no OpenSSL; glibc and libgcc from the cc image.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/klio-operator /usr/local/bin/klio-operator
COPY --from=builder /out/klio-cnpg-plugin /usr/local/bin/klio-cnpg-plugin
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/klio-operator"]
