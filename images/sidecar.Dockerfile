# wsgate-sidecar as a static (musl) binary on an empty image, running as non-root.
# Build context: the repository root.
FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p wsgate-sidecar

FROM scratch
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/wsgate-sidecar /wsgate-sidecar
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/wsgate-sidecar"]
