# wsgate-sidecar as a static (musl) binary on an empty image, running as non-root.
# Build context: the repository root (`make images`); .dockerignore keeps build output, virtualenvs
# and the test bed's state out of it, and keeps every workspace member, which cargo loads even
# when building one package.
FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
# The musl target of the build machine's own architecture (x86_64 or aarch64), copied to a fixed
# path so that the final stage does not depend on it.
RUN target="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --target "$target" -p wsgate-sidecar \
 && cp "target/$target/release/wsgate-sidecar" /wsgate-sidecar

FROM scratch
COPY --from=build /wsgate-sidecar /wsgate-sidecar
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/wsgate-sidecar"]
