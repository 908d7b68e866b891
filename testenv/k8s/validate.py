"""Would the API server accept these manifests? Render, validate, report — and the CLI.

    render(path) -> list[dict]              `kubectl kustomize <dir>` (RenderError on failure)
    render_with_warnings(path)              the objects and kustomize's warnings (deprecations)
    validate(objects, istio="1.27.3") -> list[str]
                                            every error, "<Kind> <ns>/<name>: <field.path>: <message>"
    validate_tree(root) -> list[Target]     every kustomization and standalone manifest under root
    kustomizations(root), standalone_files(root)   discovery

Which schema an object gets (`schema_source`):
- a kind some vendored CRD defines (testenv/crds/: Istio 1.27.3, or Istio master for kinds 1.27.3
  lacks, such as TrafficExtension; Gateway API v1.3.0): the CRD's structural schema and CEL rules
  (structural.py), plus metadata as a strict ObjectMeta;
- a built-in kind: kubernetes-validate's strict schema for Kubernetes 1.33, plus a subset of the
  API server's Go validation (builtin.py);
- anything else: an error "no schema for ...", never a pass.
Then the cross-object checks of semantic.py run on the whole set.

CLI (from testenv/: `python -m k8s.validate PATH...`; from the repository root:
`python testenv/k8s/validate.py PATH...`): a directory holding a kustomization is rendered; any
other directory is searched for kustomizations and standalone manifests; a file is validated as
a standalone manifest. Prints every error; exits 1 if there is any.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `k8s` importable, then use the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from k8s.validate import main  # noqa: E402

    sys.exit(main())

import yaml  # noqa: E402

from . import builtin, crds, semantic, structural  # noqa: E402

DEFAULT_ISTIO = "1.27.3"
KUBE_VERSION = builtin.KUBE_VERSION
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml when available: faster
    """A safe YAML loader that refuses a key repeated in one mapping: kubectl's strict decoding
    rejects it ("duplicate field"), where plain PyYAML would silently keep the last value."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            k = self.construct_object(key_node, deep=True)
            if k in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate field {k!r}", key_node.start_mark)
            seen.add(k)
        return super().construct_mapping(node, deep)


# Objects that live in manifests but are never sent to the API server, with the reason. A
# standalone file holding one is reported as skipped, by name, never passed over silently; in a
# kustomization (which is applied) such a kind is an error like any kind without a schema.
NOT_API_OBJECTS: dict[tuple[str, str], str] = {
    ("install.istio.io", "IstioOperator"):
        "input to `istioctl install -f`, which renders it client-side; it is never applied to the "
        "API server (Istio removed the in-cluster operator in 1.24 and its CRD bundle has no "
        "IstioOperator)",
}


class RenderError(Exception):
    pass


# --- rendering and discovery ------------------------------------------------------------------------


def render_with_warnings(path: str | Path) -> tuple[list[dict], list[str]]:
    """`kubectl kustomize path`: the objects, and the warnings kustomize printed (such as a
    deprecated `patchesStrategicMerge`), which `validate_tree` counts as errors."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        raise RenderError("kubectl not found on PATH: run testenv/setup.sh (make test does)")
    r = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RenderError(f"kubectl kustomize {path} failed: {r.stderr.strip()}")
    warnings = [line.lstrip("# ").strip() for line in r.stderr.splitlines() if line.strip()]
    return [d for d in yaml.load_all(r.stdout, Loader=_Loader) if d], warnings


def render(path: str | Path) -> list[dict]:
    """The objects `kubectl kustomize path` renders (RenderError if it fails)."""
    return render_with_warnings(path)[0]


def load_file(path: str | Path) -> list[dict]:
    """The YAML documents of a manifest file (empty documents dropped)."""
    with open(path) as f:
        return [d for d in yaml.load_all(f, Loader=_Loader) if d]


def _kustomization_file(directory: Path) -> Path | None:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def kustomizations(root: str | Path) -> list[Path]:
    """Every directory under root (root included) that holds a kustomization, sorted."""
    root = Path(root)
    dirs = {p.parent for name in KUSTOMIZATION_FILES for p in root.rglob(name)}
    return sorted(dirs)


def referenced_files(root: str | Path) -> set[Path]:
    """Files that some kustomization under root uses (resources, patches, generators...)."""
    out: set[Path] = set()
    for d in kustomizations(root):
        k = yaml.load(_kustomization_file(d).read_text(), Loader=_Loader) or {}
        entries: list = []
        for f in ("resources", "bases", "components", "crds", "patchesStrategicMerge",
                  "configurations", "transformers", "generators", "validators"):
            entries += [e for e in k.get(f) or [] if isinstance(e, str)]
        for f in ("patches", "patchesJson6902", "replacements"):
            entries += [e["path"] for e in k.get(f) or [] if isinstance(e, dict) and "path" in e]
        for f in ("configMapGenerator", "secretGenerator"):
            for gen in k.get(f) or []:
                entries += [e.split("=", 1)[-1] for e in gen.get("files") or []]
                entries += list(gen.get("envs") or []) + ([gen["env"]] if gen.get("env") else [])
        if isinstance(k.get("openapi"), dict) and "path" in k["openapi"]:
            entries.append(k["openapi"]["path"])
        for e in entries:
            p = (d / e).resolve()
            if p.is_file():
                out.add(p)
    return out


def standalone_files(root: str | Path) -> list[Path]:
    """YAML files under root that no kustomization uses: validated on their own."""
    root = Path(root)
    used = referenced_files(root)
    files = [p for ext in ("*.yaml", "*.yml") for p in root.rglob(ext)]
    return sorted(p for p in files if p.name not in KUSTOMIZATION_FILES and p.resolve() not in used)


# --- validation ------------------------------------------------------------------------------------


def describe(obj: dict) -> str:
    """"VirtualService istio-system/wsgate-ssh", "ClusterRole wsgate-sidecar-reviews"."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name") or meta.get("generateName") or "<no name>"
    ns = meta.get("namespace") if semantic.namespace_of(obj) else None
    return f"{obj.get('kind', '<no kind>')} {ns + '/' if ns else ''}{name}"


def schema_source(obj: dict, istio: str = DEFAULT_ISTIO, kube: str = KUBE_VERSION) -> str | None:
    """Where obj's schema comes from: a vendored CRD file name, "kubernetes-validate <v>", or None."""
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    for crd in crds.lookup(group, str(obj.get("kind", "")), istio):
        if crd.version == version:
            return crd.source
    if builtin.has_schema(str(obj.get("apiVersion", "")), str(obj.get("kind", "")), kube):
        return f"kubernetes-validate {builtin.schema_version(kube)}"
    return None


def validate_object(obj: dict, istio: str = DEFAULT_ISTIO, kube: str = KUBE_VERSION) -> list[tuple[str, str]]:
    """(path, message) errors of one object, on its own (no cross-object checks)."""
    if not isinstance(obj, dict):
        return [("", f"not an object: {obj!r:.60}")]
    api, kind = obj.get("apiVersion"), obj.get("kind")
    missing = [(f, "Required value") for f in ("apiVersion", "kind") if not isinstance(obj.get(f), str) or not obj.get(f)]
    if missing:
        return missing
    group, _, version = api.rpartition("/")
    versions = crds.lookup(group, kind, istio)
    if versions:
        match = [v for v in versions if v.version == version]
        if not match:
            return [("apiVersion", f"no schema for {api} {kind}: {versions[0].source} defines "
                                   f"{kind} in versions {', '.join(v.version for v in versions)} only")]
        crd = match[0]
        if not crd.served:
            return [("apiVersion", f"{api} {kind} is not served by {crd.source}")]
        errs, _ = structural.validate_custom_resource(obj, crd.schema)
        errs += builtin.validate_object_meta(obj.get("metadata"), kube)
        meta_errs: list = []
        builtin.check_metadata(obj, meta_errs)
        return errs + meta_errs
    try:
        errs = builtin.validate_schema(obj, kube)
    except builtin.NoSchema:
        return [("", f"no schema for {api} {kind}: not a built-in kind of Kubernetes {kube} "
                     f"(kubernetes-validate {builtin.schema_version(kube)}) and no vendored CRD in "
                     f"{crds.CRD_DIR} defines it")]
    return errs + builtin.go_validation(obj)


def _key(obj: dict) -> tuple:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return (semantic.group_of(obj), obj.get("kind"), semantic.namespace_of(obj), meta.get("name"))


def validate(objects: list[dict], istio: str = DEFAULT_ISTIO, kube: str = KUBE_VERSION,
             cross_object: bool = True) -> list[str]:
    """Every error in a set of objects as "<Kind> <namespace>/<name>: <path>: <message>": each
    object against its schema (Istio bundle `istio`, Kubernetes `kube`), then, unless
    cross_object is False, the checks of semantic.py across the set."""
    out: list[str] = []
    seen: set = set()
    for obj in objects:
        for path, msg in validate_object(obj, istio, kube):
            out.append(f"{describe(obj)}: {path + ': ' if path else ''}{msg}")
        if isinstance(obj, dict):
            k = _key(obj)
            if k in seen:
                out.append(f"{describe(obj)}: metadata.name: Duplicate value: defined twice in the set")
            seen.add(k)
    if cross_object:
        good = [o for o in objects if isinstance(o, dict)]
        for obj, path, msg in semantic.check(good):
            out.append(f"{describe(obj)}: {path}: {msg}")
    return out


@dataclass
class Target:
    """One thing validated: a kustomization directory or a standalone manifest file."""
    path: Path
    kind: str  # "kustomization" or "file"
    objects: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[tuple[dict, str]] = field(default_factory=list)  # (object, reason)


def validate_kustomization(directory: str | Path, istio: str = DEFAULT_ISTIO, kube: str = KUBE_VERSION) -> Target:
    t = Target(Path(directory), "kustomization")
    try:
        t.objects, warnings = render_with_warnings(directory)
    except RenderError as e:
        t.errors.append(str(e))
        return t
    t.errors += [f"kustomize: {w}" for w in warnings]
    t.errors += validate(t.objects, istio, kube)
    return t


def validate_file(path: str | Path, istio: str = DEFAULT_ISTIO, kube: str = KUBE_VERSION) -> Target:
    """A standalone manifest: objects listed in NOT_API_OBJECTS are skipped (with the reason),
    the others validated as one set."""
    t = Target(Path(path), "file")
    try:
        t.objects = load_file(path)
    except (OSError, yaml.YAMLError) as e:
        t.errors.append(f"cannot read {path}: {e}")
        return t
    applied = []
    for obj in t.objects:
        reason = NOT_API_OBJECTS.get((semantic.group_of(obj), obj.get("kind"))) if isinstance(obj, dict) else None
        if reason:
            t.skipped.append((obj, reason))
        else:
            applied.append(obj)
    t.errors += validate(applied, istio, kube)
    return t


def validate_tree(root: str | Path, istio: str = DEFAULT_ISTIO, kube: str = KUBE_VERSION) -> list[Target]:
    """Every kustomization and every standalone manifest under root."""
    return ([validate_kustomization(d, istio, kube) for d in kustomizations(root)]
            + [validate_file(f, istio, kube) for f in standalone_files(root)])


def validate_path(path: str | Path, istio: str = DEFAULT_ISTIO, kube: str = KUBE_VERSION) -> list[Target]:
    p = Path(path)
    if p.is_dir():
        return [validate_kustomization(p, istio, kube)] if _kustomization_file(p) else validate_tree(p, istio, kube)
    if p.name in KUSTOMIZATION_FILES:
        return [validate_kustomization(p.parent, istio, kube)]
    if p.is_file():
        return [validate_file(p, istio, kube)]
    t = Target(p, "file")
    t.errors.append(f"{p}: no such file or directory")
    return [t]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m k8s.validate",
        description="Validate Kubernetes manifests as the API server would on `kubectl apply` "
                    "(strict field validation, CRD schemas and CEL rules, cross-object checks).",
        epilog="From testenv/: python -m k8s.validate ../istio   "
               "From the repository root: python testenv/k8s/validate.py istio")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a kustomization directory, a directory to search, or a manifest file")
    parser.add_argument("--istio", default=DEFAULT_ISTIO, choices=crds.istio_versions(),
                        help=f"Istio CRD bundle (default {DEFAULT_ISTIO})")
    parser.add_argument("--kube", default=KUBE_VERSION, help=f"Kubernetes version (default {KUBE_VERSION})")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.paths:
        for t in validate_path(path, args.istio, args.kube):
            for obj, reason in t.skipped:
                print(f"skipped {t.path}: {describe(obj)}: not an API object: {reason}")
            if t.errors:
                failed += 1
                print(f"FAIL {t.path}: {len(t.errors)} error(s)")
                for e in t.errors:
                    print(f"  {e}")
            else:
                skipped = f", {len(t.skipped)} skipped" if t.skipped else ""
                print(f"ok   {t.path} ({len(t.objects) - len(t.skipped)} objects validated{skipped})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
