"""Built-in Kubernetes kinds (Deployment, Service, ...): the API server's checks on one object.

Two layers:

- The OpenAPI schema, from PyPI `kubernetes-validate`'s bundled JSON schemas in their strict
  variant (`additionalProperties: false` everywhere): unknown fields, types, required fields.
  The Kubernetes version is the one kind v0.29.0 runs by default, 1.33 (`KUBE_VERSION`); the
  package ships a schema set per minor version and the newest one not newer is used.
- `go_validation`: a subset of the API server's hand-written Go validation
  (pkg/apis/*/validation), which those schemas do not express: name and label syntax, port
  numbers and names, protocols, probe handlers, resource quantities, volume mounts, Service
  ports, PodDisruptionBudget, NetworkPolicy, HorizontalPodAutoscaler and RBAC rules. It is a
  subset: what these manifests use or are likely to get wrong, not all of Kubernetes.

Errors are (path, message) pairs, paths in the API server's notation.
"""
from __future__ import annotations

import base64
import functools
import ipaddress
import json
import re
from typing import Any, Callable

import jsonschema
import referencing
from kubernetes_validate import utils as kv_utils
from kubernetes_validate.version import __version__ as KUBERNETES_VALIDATE_VERSION

from . import cel_ext
from .structural import child, index, key, show

KUBE_VERSION = "1.33"  # what kind v0.29.0 runs by default (kindest/node v1.33.1)

# Kinds without a namespace (kubectl apply ignores metadata.namespace on them).
CLUSTER_SCOPED = frozenset({
    "Namespace", "Node", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "StorageClass",
    "CustomResourceDefinition", "PriorityClass", "IngressClass", "RuntimeClass", "CSIDriver",
    "CSINode", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "APIService",
    "CertificateSigningRequest", "FlowSchema", "PriorityLevelConfiguration", "VolumeAttachment",
})


class NoSchema(Exception):
    """No bundled schema for this apiVersion/kind."""


def schema_version(kube: str = KUBE_VERSION) -> str:
    """The kubernetes-validate schema set used for Kubernetes `kube` (e.g. "1.33.0")."""
    want = tuple(int(p) for p in kube.lstrip("v").split(".")[:2])
    versions = [v for v in kv_utils.all_versions() if tuple(int(p) for p in v.split(".")[:2]) <= want]
    if not versions:
        raise ValueError(f"kubernetes-validate {KUBERNETES_VALIDATE_VERSION} has no schemas for "
                         f"Kubernetes {kube} or older")
    return versions[-1]


@functools.lru_cache(maxsize=4)
def _registry(version: str) -> referencing.Registry:
    defs = kv_utils.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    return referencing.Resource.from_contents(defs) @ referencing.Registry()


def _schema_file(api_version: str, kind: str) -> str:
    # kubernetes-validate's naming: rbac.authorization.k8s.io/v1 Role -> role-rbac-v1.json
    return "%s-%s.json" % (kind.lower(), re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version))


@functools.lru_cache(maxsize=256)
def _validator(api_version: str, kind: str, version: str):
    try:
        schema = kv_utils.schema_contents(
            f"kubernetes-json-schema/v{version}-local-strict/{_schema_file(api_version, kind)}", version)
    except (FileNotFoundError, OSError):
        return None
    group, _, ver = api_version.rpartition("/")
    gvks = schema.get("x-kubernetes-group-version-kind") or []
    if not any(g.get("group", "") == group and g.get("version") == ver and g.get("kind") == kind for g in gvks):
        return None  # e.g. apps.example.com/v1 would otherwise find apps/v1's file
    return jsonschema.Draft202012Validator(schema, registry=_registry(version))


@functools.lru_cache(maxsize=4)
def _meta_validator(version: str):
    schema = {"$id": "https://kubernetes.io/api/objectmeta",
              "$ref": "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    return jsonschema.Draft202012Validator(schema, registry=_registry(version))


def has_schema(api_version: str, kind: str, kube: str = KUBE_VERSION) -> bool:
    return _validator(api_version, kind, schema_version(kube)) is not None


_PLAIN_FIELD = re.compile(r"^[A-Za-z_$@][A-Za-z0-9_$@-]*$")


def _path(prefix: str, parts) -> str:
    p = prefix
    for part in parts:
        if isinstance(part, int):
            p = index(p, part)
        elif _PLAIN_FIELD.match(part):
            p = child(p, part)
        else:
            p = key(p, part)
    return p


def _schema_errors(validator, instance: Any, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for e in validator.iter_errors(instance):
        p = _path(prefix, e.absolute_path)
        if e.validator == "additionalProperties" and isinstance(e.instance, dict):
            known = set((e.schema.get("properties") or {}))
            for k in e.instance:
                if k not in known:
                    f = _path(p, [k])
                    out.append((f, f'unknown field "{f}"'))
        elif e.validator == "required" and isinstance(e.instance, dict):
            for r in e.validator_value:
                if r not in e.instance:
                    out.append((_path(p, [r]), "Required value"))
        elif e.validator == "type":
            types = [t for t in (e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]) if t != "null"]
            out.append((p, f"Invalid value: {show(e.instance)}: must be of type {' or '.join(types)}"))
        elif e.validator == "enum":
            out.append((p, f"Unsupported value: {show(e.instance)}: supported values: "
                           + ", ".join(json.dumps(v) for v in e.validator_value)))
        elif e.validator in ("oneOf", "anyOf") and all(set(s) <= {"type"} for s in e.validator_value):
            types = sorted({t for s in e.validator_value for t in ([s["type"]] if isinstance(s["type"], str) else s["type"]) if t != "null"})
            out.append((p, f"Invalid value: {show(e.instance)}: must be of type {' or '.join(types)}"))
        else:
            out.append((p, e.message))
    return sorted(set(out), key=out.index)


def validate_schema(obj: dict, kube: str = KUBE_VERSION) -> list[tuple[str, str]]:
    """Strict OpenAPI schema errors; NoSchema when the kind is not a built-in one."""
    version = schema_version(kube)
    v = _validator(obj.get("apiVersion", ""), obj.get("kind", ""), version)
    if v is None:
        raise NoSchema(f"{obj.get('apiVersion')} {obj.get('kind')}")
    return _schema_errors(v, obj)


def validate_object_meta(meta: Any, kube: str = KUBE_VERSION) -> list[tuple[str, str]]:
    """Strict ObjectMeta schema errors (for custom resources, whose CRD schema has no metadata)."""
    return _schema_errors(_meta_validator(schema_version(kube)), meta, "metadata")


# --- the Go validation subset --------------------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_IANA = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])*$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def dns_label(s: Any) -> str | None:
    if not isinstance(s, str) or len(s) > 63 or not _DNS_LABEL.match(s):
        return "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', start and end with an alphanumeric character, and be at most 63 characters"
    return None


def dns_subdomain(s: Any) -> str | None:
    if not isinstance(s, str) or len(s) > 253 or not all(_DNS_LABEL.match(p) for p in s.split(".")):
        return "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
    return None


def dns1035_label(s: Any) -> str | None:
    if not isinstance(s, str) or len(s) > 63 or not _DNS1035.match(s):
        return "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character"
    return None


def path_segment(s: Any) -> str | None:
    if not isinstance(s, str) or s in (".", "..") or "/" in s or "%" in s:
        return "may not be '.' or '..' and may not contain '/' or '%'"
    return None


def qualified_name(s: Any) -> str | None:
    if not isinstance(s, str):
        return "must be a string"
    prefix, slash, name = s.rpartition("/")
    if slash and (not prefix or dns_subdomain(prefix)):
        return "prefix part must be a DNS-1123 subdomain"
    if not name or len(name) > 63 or not _QUALIFIED.match(name):
        return "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63)"
    return None


def label_value(s: Any) -> str | None:
    if not isinstance(s, str) or len(s) > 63 or (s and not _QUALIFIED.match(s)):
        return "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63)"
    return None


def iana_svc_name(s: str) -> str | None:
    if len(s) > 15 or not _IANA.match(s) or "--" in s or not re.search(r"[a-z]", s):
        return "must be an IANA_SVC_NAME: at most 15 lower case alphanumeric characters or '-', with at least one letter, no '--', not starting or ending with '-'"
    return None


def _port_number(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535


def _check_port_num_or_name(v: Any, path: str, errs: list) -> None:
    if isinstance(v, str):
        if msg := iana_svc_name(v):
            errs.append((path, f"Invalid value: {show(v)}: {msg}"))
    elif not _port_number(v):
        errs.append((path, f"Invalid value: {show(v)}: must be between 1 and 65535, inclusive"))


def name_rule(kind: str) -> Callable[[Any], str | None]:
    if kind == "Namespace":
        return dns_label
    if kind == "Service":
        return dns1035_label
    if kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
        return path_segment
    return dns_subdomain


def check_metadata(obj: dict, errs: list) -> None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        errs.append(("metadata", "Required value"))
        return
    if "name" not in meta and "generateName" not in meta:
        errs.append(("metadata.name", "Required value: name or generateName is required"))
    elif "name" in meta and (msg := name_rule(obj.get("kind", ""))(meta["name"])):
        errs.append(("metadata.name", f"Invalid value: {show(meta['name'])}: {msg}"))
    if "namespace" in meta and obj.get("kind") not in CLUSTER_SCOPED and (msg := dns_label(meta["namespace"])):
        errs.append(("metadata.namespace", f"Invalid value: {show(meta['namespace'])}: {msg}"))
    check_labels(meta.get("labels"), "metadata.labels", errs)
    annotations = meta.get("annotations") or {}
    if isinstance(annotations, dict):
        for k in annotations:
            if msg := qualified_name(k.lower()):
                errs.append((key("metadata.annotations", k), f"Invalid value: {show(k)}: {msg}"))
        if sum(len(k) + len(str(v)) for k, v in annotations.items()) > 256 * 1024:
            errs.append(("metadata.annotations", "Too long: must have at most 262144 bytes"))


def check_labels(labels: Any, path: str, errs: list) -> None:
    if not isinstance(labels, dict):
        return
    for k, v in labels.items():
        if msg := qualified_name(k):
            errs.append((key(path, k), f"Invalid value: {show(k)}: {msg}"))
        if msg := label_value(v):
            errs.append((key(path, k), f"Invalid value: {show(v)}: {msg}"))


def check_label_selector(sel: Any, path: str, errs: list) -> None:
    if not isinstance(sel, dict):
        return
    check_labels(sel.get("matchLabels"), child(path, "matchLabels"), errs)
    for i, expr in enumerate(sel.get("matchExpressions") or []):
        p = index(child(path, "matchExpressions"), i)
        op, values = expr.get("operator"), expr.get("values") or []
        if op in ("In", "NotIn") and not values:
            errs.append((child(p, "values"), "Required value: must be specified when `operator` is 'In' or 'NotIn'"))
        elif op in ("Exists", "DoesNotExist") and values:
            errs.append((child(p, "values"), "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"))
        elif op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            errs.append((child(p, "operator"), f"Invalid value: {show(op)}: not a valid selector operator"))
        if msg := qualified_name(expr.get("key")):
            errs.append((child(p, "key"), f"Invalid value: {show(expr.get('key'))}: {msg}"))


def parse_quantity(v: Any):
    if isinstance(v, bool):
        raise ValueError("not a quantity")
    if isinstance(v, (int, float)):
        return cel_ext.parse_quantity(repr(v) if isinstance(v, float) else str(v))
    return cel_ext.parse_quantity(str(v))


_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")


def _check_handler(h: dict, path: str, errs: list, what: str) -> None:
    given = [k for k in _HANDLERS if k in h]
    if len(given) > 1:
        errs.append((child(path, given[1]), f"Forbidden: may not specify more than 1 handler type"))
    elif not given and what == "probe":
        errs.append((path, "Required value: must specify a handler type"))
    for k in ("httpGet", "tcpSocket"):
        if isinstance(h.get(k), dict):
            if "port" not in h[k]:
                errs.append((child(child(path, k), "port"), "Required value"))
            else:
                _check_port_num_or_name(h[k]["port"], child(child(path, k), "port"), errs)
    if isinstance(h.get("grpc"), dict) and not _port_number(h["grpc"].get("port")):
        errs.append((child(child(path, "grpc"), "port"), f"Invalid value: {show(h['grpc'].get('port'))}: must be between 1 and 65535, inclusive"))


def check_pod_spec(spec: Any, path: str, errs: list, template_of: str | None = None) -> None:
    if not isinstance(spec, dict):
        return
    volumes = {}
    for i, v in enumerate(spec.get("volumes") or []):
        p = index(child(path, "volumes"), i)
        name = v.get("name")
        if msg := dns_label(name):
            errs.append((child(p, "name"), f"Invalid value: {show(name)}: {msg}"))
        elif name in volumes:
            errs.append((child(p, "name"), f"Duplicate value: {show(name)}"))
        volumes[name] = v
    seen_names: set = set()
    for group in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(spec.get(group) or []):
            if isinstance(c, dict):
                check_container(c, index(child(path, group), i), errs, volumes, seen_names)
    if template_of in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet") and spec.get("restartPolicy", "Always") != "Always":
        errs.append((child(path, "restartPolicy"), f"Unsupported value: {show(spec.get('restartPolicy'))}: supported values: \"Always\""))


def check_container(c: dict, path: str, errs: list, volumes: dict, seen_names: set) -> None:
    name = c.get("name")
    if msg := dns_label(name):
        errs.append((child(path, "name"), f"Invalid value: {show(name)}: {msg}"))
    elif name in seen_names:
        errs.append((child(path, "name"), f"Duplicate value: {show(name)}"))
    seen_names.add(name)
    if not c.get("image"):
        errs.append((child(path, "image"), "Required value"))
    port_names: set = set()
    for i, port in enumerate(c.get("ports") or []):
        p = index(child(path, "ports"), i)
        if not _port_number(port.get("containerPort")):
            errs.append((child(p, "containerPort"), f"Invalid value: {show(port.get('containerPort'))}: must be between 1 and 65535, inclusive"))
        hp = port.get("hostPort")
        if hp not in (None, 0) and not _port_number(hp):
            errs.append((child(p, "hostPort"), f"Invalid value: {show(hp)}: must be between 1 and 65535, inclusive"))
        if "name" in port:
            if msg := iana_svc_name(str(port["name"])):
                errs.append((child(p, "name"), f"Invalid value: {show(port['name'])}: {msg}"))
            elif port["name"] in port_names:
                errs.append((child(p, "name"), f"Duplicate value: {show(port['name'])}"))
            port_names.add(port["name"])
        if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            errs.append((child(p, "protocol"), f"Unsupported value: {show(port.get('protocol'))}: supported values: \"SCTP\", \"TCP\", \"UDP\""))
    for probe in _PROBES:
        if isinstance(c.get(probe), dict):
            pp = child(path, probe)
            _check_handler(c[probe], pp, errs, "probe")
            if probe != "readinessProbe" and c[probe].get("successThreshold", 1) != 1:
                errs.append((child(pp, "successThreshold"), "Invalid value: must be 1"))
    for hook in ("postStart", "preStop"):
        h = (c.get("lifecycle") or {}).get(hook)
        if isinstance(h, dict):
            _check_handler(h, child(child(path, "lifecycle"), hook), errs, "hook")
    for i, env in enumerate(c.get("env") or []):
        n = env.get("name")
        # Kubernetes 1.33 (RelaxedEnvironmentVariableValidation, on by default): printable ASCII but '='.
        if not isinstance(n, str) or not n or "=" in n or not all(32 <= ord(ch) <= 126 for ch in n):
            errs.append((child(index(child(path, "env"), i), "name"), f"Invalid value: {show(n)}: a valid environment variable name must consist only of printable ASCII characters other than '='"))
    res = c.get("resources") or {}
    values: dict = {}
    for section in ("requests", "limits"):
        for rname, q in (res.get(section) or {}).items():
            p = key(child(child(path, "resources"), section), rname)
            try:
                values[(section, rname)] = parse_quantity(q)
            except ValueError:
                errs.append((p, f"Invalid value: {show(q)}: must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))
                continue
            if values[(section, rname)] < 0:
                errs.append((p, f"Invalid value: {show(q)}: must be greater than or equal to 0"))
    for (section, rname), v in values.items():
        if section == "requests" and ("limits", rname) in values and v > values[("limits", rname)]:
            errs.append((key(child(child(path, "resources"), "requests"), rname),
                         f"Invalid value: {show((res.get('requests') or {}).get(rname))}: must be less than or equal to {rname} limit of {show(res['limits'][rname])}"))
    for i, m in enumerate(c.get("volumeMounts") or []):
        p = index(child(path, "volumeMounts"), i)
        if m.get("name") not in volumes:
            errs.append((child(p, "name"), f"Not found: {show(m.get('name'))}: no volume of that name in the pod"))
        if not m.get("mountPath"):
            errs.append((child(p, "mountPath"), "Required value"))


def pod_spec_paths(obj: dict) -> list[tuple[str, str, dict, dict]]:
    """(path of the pod spec, path of the pod metadata, pod metadata, pod spec) of a workload."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "Pod":
        return [("spec", "metadata", obj.get("metadata") or {}, spec)]
    if kind in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "ReplicationController", "Job"):
        t = spec.get("template") or {}
        return [("spec.template.spec", "spec.template.metadata", t.get("metadata") or {}, t.get("spec") or {})]
    if kind == "CronJob":
        t = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        return [("spec.jobTemplate.spec.template.spec", "spec.jobTemplate.spec.template.metadata",
                 t.get("metadata") or {}, t.get("spec") or {})]
    return []


def _check_service(obj: dict, errs: list) -> None:
    spec = obj.get("spec") or {}
    typ = spec.get("type", "ClusterIP")
    if typ not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        errs.append(("spec.type", f"Unsupported value: {show(typ)}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""))
    ports = spec.get("ports") or []
    if not ports and typ != "ExternalName" and spec.get("clusterIP") != "None":
        errs.append(("spec.ports", "Required value"))
    names, pairs = set(), set()
    for i, port in enumerate(ports):
        p = index("spec.ports", i)
        name = port.get("name")
        if len(ports) > 1 and not name:
            errs.append((child(p, "name"), "Required value"))
        if name:
            if msg := dns_label(name):
                errs.append((child(p, "name"), f"Invalid value: {show(name)}: {msg}"))
            elif name in names:
                errs.append((child(p, "name"), f"Duplicate value: {show(name)}"))
            names.add(name)
        if not _port_number(port.get("port")):
            errs.append((child(p, "port"), f"Invalid value: {show(port.get('port'))}: must be between 1 and 65535, inclusive"))
        proto = port.get("protocol", "TCP")
        if proto not in ("TCP", "UDP", "SCTP"):
            errs.append((child(p, "protocol"), f"Unsupported value: {show(proto)}: supported values: \"SCTP\", \"TCP\", \"UDP\""))
        if (port.get("port"), proto) in pairs:
            errs.append((p, f"Duplicate value: {show({'port': port.get('port'), 'protocol': proto})}"))
        pairs.add((port.get("port"), proto))
        if "targetPort" in port:
            _check_port_num_or_name(port["targetPort"], child(p, "targetPort"), errs)
    check_labels(spec.get("selector"), "spec.selector", errs)


def _int_or_percent(v: Any, path: str, errs: list) -> None:
    if isinstance(v, str):
        if not re.fullmatch(r"[0-9]+%", v):
            errs.append((path, f"Invalid value: {show(v)}: must be an integer or percentage (e.g '5%')"))
        elif int(v[:-1]) > 100:
            errs.append((path, f"Invalid value: {show(v)}: must not be greater than 100%"))
    elif not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        errs.append((path, f"Invalid value: {show(v)}: must be greater than or equal to 0"))


def _check_pdb(obj: dict, errs: list) -> None:
    spec = obj.get("spec") or {}
    if "minAvailable" in spec and "maxUnavailable" in spec:
        errs.append(("spec", "Invalid value: minAvailable and maxUnavailable cannot be both set"))
    for f in ("minAvailable", "maxUnavailable"):
        if f in spec:
            _int_or_percent(spec[f], f"spec.{f}", errs)
    check_label_selector(spec.get("selector"), "spec.selector", errs)


def _check_network_policy(obj: dict, errs: list) -> None:
    spec = obj.get("spec") or {}
    check_label_selector(spec.get("podSelector"), "spec.podSelector", errs)
    for i, t in enumerate(spec.get("policyTypes") or []):
        if t not in ("Ingress", "Egress"):
            errs.append((index("spec.policyTypes", i), f"Unsupported value: {show(t)}: supported values: \"Ingress\", \"Egress\""))
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        for i, r in enumerate(spec.get(direction) or []):
            rp = index(f"spec.{direction}", i)
            for j, port in enumerate(r.get("ports") or []):
                p = index(child(rp, "ports"), j)
                if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
                    errs.append((child(p, "protocol"), f"Unsupported value: {show(port.get('protocol'))}: supported values: \"SCTP\", \"TCP\", \"UDP\""))
                if "port" in port:
                    _check_port_num_or_name(port["port"], child(p, "port"), errs)
                if "endPort" in port:
                    if not isinstance(port.get("port"), int):
                        errs.append((child(p, "endPort"), "Required value: may not be specified when `port` is not a number"))
                    elif not (isinstance(port["endPort"], int) and port["port"] <= port["endPort"] <= 65535):
                        errs.append((child(p, "endPort"), f"Invalid value: {show(port['endPort'])}: must be greater than or equal to `port`"))
            for j, peer in enumerate(r.get(peers) or []):
                p = index(child(rp, peers), j)
                check_label_selector(peer.get("podSelector"), child(p, "podSelector"), errs)
                check_label_selector(peer.get("namespaceSelector"), child(p, "namespaceSelector"), errs)
                block = peer.get("ipBlock")
                if isinstance(block, dict):
                    if len(peer) > 1:
                        errs.append((p, "Forbidden: may not specify both ipBlock and another peer"))
                    try:
                        net = ipaddress.ip_network(block.get("cidr", ""), strict=False)
                    except ValueError:
                        errs.append((child(child(p, "ipBlock"), "cidr"), f"Invalid value: {show(block.get('cidr'))}: must be a valid CIDR"))
                        continue
                    for k, ex in enumerate(block.get("except") or []):
                        try:
                            inner = ipaddress.ip_network(ex, strict=False)
                            ok = inner.version == net.version and inner.subnet_of(net) and inner != net
                        except ValueError:
                            ok = False
                        if not ok:
                            errs.append((index(child(child(p, "ipBlock"), "except"), k), f"Invalid value: {show(ex)}: must be a strict subset of `cidr`"))


def _check_hpa(obj: dict, errs: list) -> None:
    spec = obj.get("spec") or {}
    lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas")
    if isinstance(lo, int) and lo < 1:
        errs.append(("spec.minReplicas", f"Invalid value: {lo}: must be greater than or equal to 1"))
    if isinstance(hi, int) and isinstance(lo, int):
        if hi < 1:
            errs.append(("spec.maxReplicas", f"Invalid value: {hi}: must be greater than 0"))
        elif hi < lo:
            errs.append(("spec.maxReplicas", f"Invalid value: {hi}: must be greater than or equal to `minReplicas`"))
    ref = spec.get("scaleTargetRef") or {}
    for f in ("kind", "name"):
        if not ref.get(f):
            errs.append((f"spec.scaleTargetRef.{f}", "Required value"))
    expected = {"Resource": "resource", "Pods": "pods", "Object": "object",
                "ContainerResource": "containerResource", "External": "external"}
    for i, m in enumerate(spec.get("metrics") or []):
        p = index("spec.metrics", i)
        t = m.get("type")
        if t not in expected:
            errs.append((child(p, "type"), f"Unsupported value: {show(t)}: supported values: " + ", ".join(json.dumps(k) for k in expected)))
            continue
        for other in expected.values():
            if other != expected[t] and other in m:
                errs.append((child(p, other), f"Forbidden: must populate the given metric source only ({expected[t]})"))
        if expected[t] not in m:
            errs.append((child(p, expected[t]), f"Required value: must populate information for the given metric source"))


def _check_rbac_binding(obj: dict, errs: list) -> None:
    ref = obj.get("roleRef") or {}
    if ref.get("apiGroup") != "rbac.authorization.k8s.io":
        errs.append(("roleRef.apiGroup", f"Unsupported value: {show(ref.get('apiGroup'))}: supported values: \"rbac.authorization.k8s.io\""))
    allowed = ("ClusterRole",) if obj.get("kind") == "ClusterRoleBinding" else ("Role", "ClusterRole")
    if ref.get("kind") not in allowed:
        errs.append(("roleRef.kind", f"Unsupported value: {show(ref.get('kind'))}: supported values: " + ", ".join(json.dumps(a) for a in allowed)))
    if not ref.get("name"):
        errs.append(("roleRef.name", "Required value"))
    for i, s in enumerate(obj.get("subjects") or []):
        p = index("subjects", i)
        k = s.get("kind")
        if k == "ServiceAccount":
            if s.get("apiGroup", ""):
                errs.append((child(p, "apiGroup"), f"Unsupported value: {show(s.get('apiGroup'))}: supported values: \"\""))
            if obj.get("kind") == "ClusterRoleBinding" and not s.get("namespace"):
                errs.append((child(p, "namespace"), "Required value"))
        elif k in ("User", "Group"):
            if s.get("apiGroup") != "rbac.authorization.k8s.io":
                errs.append((child(p, "apiGroup"), f"Unsupported value: {show(s.get('apiGroup'))}: supported values: \"rbac.authorization.k8s.io\""))
        else:
            errs.append((child(p, "kind"), f"Unsupported value: {show(k)}: supported values: \"Group\", \"ServiceAccount\", \"User\""))
        if not s.get("name"):
            errs.append((child(p, "name"), "Required value"))


def _check_rbac_role(obj: dict, errs: list) -> None:
    for i, r in enumerate(obj.get("rules") or []):
        p = index("rules", i)
        if not r.get("verbs"):
            errs.append((child(p, "verbs"), "Required value: verbs must contain at least one value"))
        if r.get("nonResourceURLs") and obj.get("kind") == "Role":
            errs.append((child(p, "nonResourceURLs"), "Invalid value: namespaced rules cannot apply to non-resource URLs"))
        if not r.get("nonResourceURLs") and not r.get("resources"):
            errs.append((child(p, "resources"), "Required value: resource rules must supply at least one resource"))
        if not r.get("nonResourceURLs") and r.get("apiGroups") is None:
            errs.append((child(p, "apiGroups"), "Required value: resource rules must supply at least one api group"))


def _check_data_keys(obj: dict, errs: list) -> None:
    for section in ("data", "stringData", "binaryData"):
        for k, v in (obj.get(section) or {}).items():
            p = key(section, k)
            if not isinstance(k, str) or len(k) > 253 or not _CONFIG_KEY.match(k) or k in (".", ".."):
                errs.append((p, f"Invalid value: {show(k)}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"))
            if obj.get("kind") == "Secret" and section == "data":
                try:
                    base64.b64decode(str(v), validate=True)
                except ValueError:
                    errs.append((p, "Invalid value: must be base64-encoded"))


_KIND_CHECKS: dict[str, Callable[[dict, list], None]] = {
    "Service": _check_service,
    "PodDisruptionBudget": _check_pdb,
    "NetworkPolicy": _check_network_policy,
    "HorizontalPodAutoscaler": _check_hpa,
    "RoleBinding": _check_rbac_binding,
    "ClusterRoleBinding": _check_rbac_binding,
    "Role": _check_rbac_role,
    "ClusterRole": _check_rbac_role,
    "Secret": _check_data_keys,
    "ConfigMap": _check_data_keys,
}


def go_validation(obj: dict) -> list[tuple[str, str]]:
    """The subset of the API server's Go validation described in the module docstring."""
    errs: list = []
    check_metadata(obj, errs)
    kind = obj.get("kind", "")
    for spec_path, meta_path, meta, spec in pod_spec_paths(obj):
        check_labels(meta.get("labels"), child(meta_path, "labels"), errs)
        check_pod_spec(spec, spec_path, errs, template_of=kind)
    if kind in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"):
        check_label_selector((obj.get("spec") or {}).get("selector"), "spec.selector", errs)
        replicas = (obj.get("spec") or {}).get("replicas")
        if isinstance(replicas, int) and replicas < 0:
            errs.append(("spec.replicas", f"Invalid value: {replicas}: must be greater than or equal to 0"))
    if kind in _KIND_CHECKS:
        _KIND_CHECKS[kind](obj, errs)
    return errs
