"""wsgate's local test bed: a real Envoy with the filter, a recording backend, throwaway TLS."""
