# The filter as Istio pulls it: an OCI image holding only the module, as /plugin.wasm, in a single
# layer (the "compat" variant istio-agent unpacks). Build context: the repository root, after
# `make filter` (`make images` runs it); .dockerignore keeps target/ out except this one file.
FROM scratch
COPY target/wsgate-filter.wasm /plugin.wasm
