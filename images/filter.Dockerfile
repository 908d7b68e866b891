# The filter as Istio pulls it: an OCI image holding only the module, as /plugin.wasm.
# Build context: the repository root, after `make filter`.
FROM scratch
COPY target/wsgate-filter.wasm /plugin.wasm
