# syntax=docker/dockerfile:1

# ---- build: the host (release) and the default guest (wasm32-wasip2) ----
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY rust-toolchain.toml ./
# Installs the pinned toolchain plus the wasm32-wasip2 target it lists; an
# image that already has the toolchain may still lack the target, so add it.
RUN rustup toolchain install && rustup target add wasm32-wasip2
COPY . .
RUN cargo build --release --locked -p host \
 && cargo build --release --locked --target wasm32-wasip2 -p guest

# ---- runtime: a small image, non-root ----
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home host \
 && mkdir -p /var/lib/host && chown 10001 /var/lib/host
COPY --from=build /src/target/release/host /usr/local/bin/host
COPY --from=build /src/target/wasm32-wasip2/release/guest.wasm /srv/guest.wasm
USER 10001
ENV HOST_LISTEN=0.0.0.0:8080 \
    HOST_STATE_DIR=/var/lib/host
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/host"]
# The default guest; Kubernetes `args` (deploy/kubernetes) replace this.
CMD ["serve", "/srv/guest.wasm"]
