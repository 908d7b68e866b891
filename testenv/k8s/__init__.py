"""Offline validation of Kubernetes manifests as the API server would judge them on `kubectl apply`.

The API lives in `k8s.validate` (import from there: the package does not re-export it, because the
function `validate` and the module `k8s.validate` would shadow each other):

    from k8s.validate import render, validate
    errors = validate(render("istio/overlays/central"))   # [] when all is well
    errors = validate(objects, istio="master")              # against Istio master's CRDs

Modules: validate (API, discovery, CLI), crds (the vendored CRDs in testenv/crds/), structural
(CRD structural schemas: pruning, defaults, validation, CEL rules), cel_ext (Kubernetes' CEL
functions for cel-python), builtin (built-in kinds: kubernetes-validate + Go validation subset),
semantic (cross-object checks). CLI: `python -m k8s.validate PATH...` from testenv/, or
`python testenv/k8s/validate.py PATH...` from the repository root.
"""
