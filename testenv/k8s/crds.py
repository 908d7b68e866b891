"""The vendored CRDs (testenv/crds/): which schema an object of a given apiVersion/kind gets.

Every `*.yaml` in testenv/crds/ is read once. Istio ships one bundle per version
(`istio-<version>.crd-all.gen.yaml`); `schema_for(..., istio="1.27.3")` picks that bundle for
Istio's groups and falls back to the other Istio bundles (master) for kinds the chosen one lacks,
saying so in the returned source. Every other file (Gateway API) is always in force.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

CRD_DIR = Path(__file__).resolve().parents[1] / "crds"
_ISTIO_BUNDLE = re.compile(r"^istio-(?P<version>.+?)\.crd-all\.gen\.yaml$")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster on 2 MB


@dataclass(frozen=True)
class CRDVersion:
    group: str
    kind: str
    version: str
    served: bool
    scope: str  # Namespaced or Cluster
    schema: dict
    source: str  # the vendored file it came from

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def istio_bundle_version(filename: str) -> str | None:
    """"1.27.3" for istio-1.27.3.crd-all.gen.yaml, "master" for istio-master-<commit>...."""
    m = _ISTIO_BUNDLE.match(filename)
    if not m:
        return None
    version = m.group("version")
    return "master" if version.startswith("master") else version


@functools.lru_cache(maxsize=None)
def _load_file(path: Path) -> tuple[CRDVersion, ...]:
    out = []
    with path.open() as f:
        for doc in yaml.load_all(f, Loader=_Loader):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for v in spec.get("versions") or []:
                schema = ((v.get("schema") or {}).get("openAPIV3Schema")) or {}
                out.append(CRDVersion(spec["group"], spec["names"]["kind"], v["name"],
                                      bool(v.get("served", True)), spec.get("scope", "Namespaced"),
                                      schema, path.name))
    return tuple(out)


def files() -> list[Path]:
    return sorted(CRD_DIR.glob("*.yaml"))


def istio_versions() -> list[str]:
    return sorted({v for p in files() if (v := istio_bundle_version(p.name))})


@functools.lru_cache(maxsize=None)
def _index(istio: str) -> dict[tuple[str, str], list[CRDVersion]]:
    """(group, kind) -> versions, the chosen Istio bundle first, then other Istio bundles only for
    (group, kind) pairs the chosen one lacks, then the non-Istio files."""
    if istio not in istio_versions():
        raise ValueError(f"no Istio CRD bundle for {istio!r} in {CRD_DIR} (have: {istio_versions()})")
    chosen, fallback, other = {}, {}, {}
    for path in files():
        bundle = istio_bundle_version(path.name)
        target = other if bundle is None else chosen if bundle == istio else fallback
        for crd in _load_file(path):
            target.setdefault((crd.group, crd.kind), []).append(crd)
    index = dict(chosen)
    for key, crds in fallback.items():
        index.setdefault(key, crds)
    for key, crds in other.items():
        index.setdefault(key, crds)
    return index


def lookup(group: str, kind: str, istio: str = "1.27.3") -> list[CRDVersion]:
    """Every vendored version of group/kind (empty when no CRD defines it)."""
    return list(_index(istio).get((group, kind), []))


def all_kinds(istio: str = "1.27.3") -> set[tuple[str, str]]:
    return set(_index(istio))


def groups(istio: str = "1.27.3") -> set[str]:
    return {g for g, _ in _index(istio)}


@functools.lru_cache(maxsize=None)
def cluster_scoped(group: str, kind: str) -> bool:
    """Whether a vendored CRD declares group/kind cluster-scoped (GatewayClass, for one)."""
    return any(crd.group == group and crd.kind == kind and crd.scope == "Cluster"
               for path in files() for crd in _load_file(path))
