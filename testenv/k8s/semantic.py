"""Cross-object checks: mistakes every object's schema accepts but that break the deployment.

The API server validates one object at a time; these checks look at the whole rendered set, the
way the objects will meet in the cluster. Each check's docstring says why it exists. Checks that
ask "does X select or name something in the set" only judge a namespace the set manages: one
where the set holds workloads (or, for references to Services/ServiceAccounts/Secrets, holds
objects of that kind). Objects that point outside the set — the Istio ingress gateway's pods in
istio-system, installed by istioctl — are left alone, so a base rendered on its own (istio/base)
or the central and pod-side layouts are each judged only on what they contain.

All functions take the rendered objects and return (object, path, message) triples.
"""
from __future__ import annotations

from typing import Any, Iterable

from . import crds
from .builtin import CLUSTER_SCOPED, pod_spec_paths
from .structural import child, index

Finding = tuple[dict, str, str]

WORKLOAD_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "ReplicationController",
                  "Job", "CronJob", "Pod")
BUILTIN_CLUSTER_ROLES = ("cluster-admin", "admin", "edit", "view")


def namespace_of(obj: dict) -> str:
    if obj.get("kind") in CLUSTER_SCOPED or crds.cluster_scoped(group_of(obj), str(obj.get("kind", ""))):
        return ""
    return (obj.get("metadata") or {}).get("namespace") or "default"


def name_of(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("name", "")


def group_of(obj: dict) -> str:
    return str(obj.get("apiVersion", "")).rpartition("/")[0]


def selector_matches(sel: Any, labels: dict) -> bool:
    """A metav1.LabelSelector (matchLabels + matchExpressions) against a label set; {} matches
    everything."""
    if not isinstance(sel, dict):
        return False
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        k, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(k) not in values:
            return False
        if op == "NotIn" and k in labels and labels[k] in values:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


class Pods:
    """The pod templates of the set's workloads, by namespace."""

    def __init__(self, objects: list[dict]):
        self.by_ns: dict[str, list[tuple[dict, dict, dict]]] = {}  # ns -> (workload, labels, spec)
        for obj in objects:
            if obj.get("kind") in WORKLOAD_KINDS:
                for _, _, meta, spec in pod_spec_paths(obj):
                    self.by_ns.setdefault(namespace_of(obj), []).append(
                        (obj, meta.get("labels") or {}, spec))

    def in_ns(self, ns: str) -> list[tuple[dict, dict, dict]]:
        return self.by_ns.get(ns, [])


def _describe(obj: dict) -> str:
    return f"{obj.get('kind')} {namespace_of(obj) + '/' if namespace_of(obj) else ''}{name_of(obj)}"


def workload_selector_matches_template(objects: list[dict], pods: Pods) -> Iterable[Finding]:
    """A Deployment (ReplicaSet, StatefulSet, DaemonSet) whose selector does not match its own pod
    template's labels is rejected by the API server ("selector does not match template labels"),
    and an empty selector too; the JSON schema cannot say so."""
    for obj in objects:
        if obj.get("kind") not in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"):
            continue
        spec = obj.get("spec") or {}
        sel = spec.get("selector")
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not isinstance(sel, dict) or not (sel.get("matchLabels") or sel.get("matchExpressions")):
            yield obj, "spec.selector", "Invalid value: empty selector is invalid for a workload"
        elif not selector_matches(sel, labels):
            yield obj, "spec.template.metadata.labels", (
                f"Invalid value: {labels}: `selector` does not match template `labels` "
                f"(selector: {sel})")


def probe_ports_are_named_container_ports(objects: list[dict], pods: Pods) -> Iterable[Finding]:
    """A probe or lifecycle hook may name its port (`port: http-admin`); the kubelet looks the
    name up among that container's own `ports` and, when it is missing, the probe fails for ever
    (the pod never becomes ready, or is restarted in a loop). The API server accepts it."""
    for obj in objects:
        for spec_path, _, _, spec in pod_spec_paths(obj):
            for group in ("initContainers", "containers"):
                for i, c in enumerate(spec.get(group) or []):
                    names = {p.get("name") for p in c.get("ports") or [] if p.get("name")}
                    cpath = index(child(spec_path, group), i)
                    handlers = [(p, c.get(p)) for p in ("livenessProbe", "readinessProbe", "startupProbe")]
                    handlers += [(f"lifecycle.{h}", (c.get("lifecycle") or {}).get(h)) for h in ("postStart", "preStop")]
                    for hpath, h in handlers:
                        if not isinstance(h, dict):
                            continue
                        for kind in ("httpGet", "tcpSocket"):
                            port = (h.get(kind) or {}).get("port")
                            if isinstance(port, str) and port not in names:
                                yield obj, f"{cpath}.{hpath}.{kind}.port", (
                                    f"Invalid value: {port!r}: not a named containerPort of container "
                                    f"{c.get('name')!r} (its named ports: {sorted(names) or 'none'})")


def service_target_ports_exist(objects: list[dict], pods: Pods) -> Iterable[Finding]:
    """A Service's named `targetPort` is resolved in each selected pod; a pod without a port of
    that name gets no endpoint, and traffic to the Service goes nowhere."""
    for obj in objects:
        if obj.get("kind") != "Service":
            continue
        sel = (obj.get("spec") or {}).get("selector")
        if not sel:
            continue
        selected = [(w, spec) for w, labels, spec in pods.in_ns(namespace_of(obj))
                    if selector_matches({"matchLabels": sel}, labels)]
        for i, port in enumerate((obj.get("spec") or {}).get("ports") or []):
            target = port.get("targetPort")
            if not isinstance(target, str):
                continue
            for w, spec in selected:
                names = {p.get("name") for c in spec.get("containers") or [] for p in c.get("ports") or []}
                if target not in names:
                    yield obj, f"spec.ports[{i}].targetPort", (
                        f"Invalid value: {target!r}: no container port of that name in {_describe(w)}, "
                        f"which the Service selects")


def selectors_select_pods(objects: list[dict], pods: Pods) -> Iterable[Finding]:
    """A PodDisruptionBudget, NetworkPolicy or Service whose selector matches none of the pods it
    was written for protects, isolates or serves nothing, silently (a typo in a label). Judged
    only in namespaces where the set has workloads: elsewhere the pods are not ours to see."""
    for obj in objects:
        kind, spec = obj.get("kind"), obj.get("spec") or {}
        if kind == "PodDisruptionBudget":
            path, sel = "spec.selector", spec.get("selector")
        elif kind == "NetworkPolicy":
            path, sel = "spec.podSelector", spec.get("podSelector")
        elif kind == "Service" and spec.get("selector"):
            path, sel = "spec.selector", {"matchLabels": spec["selector"]}
        else:
            continue
        candidates = pods.in_ns(namespace_of(obj))
        if not candidates:
            continue
        if sel is None or not any(selector_matches(sel, labels) for _, labels, _ in candidates):
            yield obj, path, (
                f"Invalid value: {sel}: selects no pod of the workloads in namespace "
                f"{namespace_of(obj)!r} ({', '.join(_describe(w) for w, _, _ in candidates)})")


def hpa_targets_exist(objects: list[dict], pods: Pods) -> Iterable[Finding]:
    """A HorizontalPodAutoscaler scales the workload in its scaleTargetRef; a wrong kind, name or
    apiVersion there leaves it failing ("the HPA was unable to compute the replica count")."""
    for obj in objects:
        if obj.get("kind") != "HorizontalPodAutoscaler":
            continue
        ref = (obj.get("spec") or {}).get("scaleTargetRef") or {}
        group = str(ref.get("apiVersion", "")).rpartition("/")[0]
        if not any(o.get("kind") == ref.get("kind") and name_of(o) == ref.get("name")
                   and namespace_of(o) == namespace_of(obj) and group_of(o) == group for o in objects):
            yield obj, "spec.scaleTargetRef", (
                f"Not found: {ref}: no such workload in namespace {namespace_of(obj)!r} of this set")


def _service_host(host: str) -> tuple[str, str] | None:
    """(service, namespace) for "svc.ns.svc.cluster.local", "svc.ns.svc" or "svc.ns"."""
    parts = host.split(".")
    if len(parts) == 2 or parts[2:] in (["svc"], ["svc", "cluster", "local"]):
        return parts[0], parts[1]
    return None


def istio_destinations_exist(objects: list[dict], pods: Pods) -> Iterable[Finding]:
    """A VirtualService destination or DestinationRule host naming a Service of a namespace this
    set manages must name a Service that exists, and a destination port must be one of its ports:
    otherwise Envoy has no cluster for the route and answers 503 ("no healthy upstream")."""
    services = {(name_of(o), namespace_of(o)): o for o in objects if o.get("kind") == "Service"}
    managed = {ns for _, ns in services}

    def check(obj, path, host, port):
        ref = _service_host(host) if isinstance(host, str) else None
        if not ref or ref[1] not in managed:
            return
        svc = services.get(ref)
        if svc is None:
            yield obj, path + ".host", f"Not found: {host!r}: no Service {ref[0]!r} in namespace {ref[1]!r} of this set"
        elif isinstance(port, int):
            numbers = [p.get("port") for p in (svc.get("spec") or {}).get("ports") or []]
            if port not in numbers:
                yield obj, path + ".port.number", f"Invalid value: {port}: Service {ref[1]}/{ref[0]} has ports {numbers}"

    for obj in objects:
        if not group_of(obj).endswith("istio.io"):
            continue
        spec = obj.get("spec") or {}
        if obj.get("kind") == "DestinationRule":
            yield from check(obj, "spec", spec.get("host"), None)
        if obj.get("kind") == "VirtualService":
            for proto in ("http", "tcp", "tls"):
                for i, r in enumerate(spec.get(proto) or []):
                    for j, d in enumerate(r.get("route") or []):
                        dest = d.get("destination") or {}
                        yield from check(obj, f"spec.{proto}[{i}].route[{j}].destination",
                                         dest.get("host"), (dest.get("port") or {}).get("number"))
                    mirror = r.get("mirror") if proto == "http" else None
                    if isinstance(mirror, dict):
                        yield from check(obj, f"spec.http[{i}].mirror", mirror.get("host"),
                                         (mirror.get("port") or {}).get("number"))


GATEWAY_API = "gateway.networking.k8s.io"


def gateway_api_refs_exist(objects: list[dict], pods: Pods) -> Iterable[Finding]:
    """Gateway API references are by name and checked by no API server: a route's parentRef to a
    Gateway (and its sectionName, a listener) that does not exist leaves the route unattached
    (status Accepted=False, traffic 404); a backendRef to a missing Service or port answers 500;
    an Istio policy's targetRefs naming a missing Gateway or Service applies to nothing. Judged
    in namespaces where the set defines Gateways (for parents) or Services (for backends)."""
    gateways = {(namespace_of(o), name_of(o)): o for o in objects
                if o.get("kind") == "Gateway" and group_of(o) == GATEWAY_API}
    services = {(namespace_of(o), name_of(o)): o for o in objects if o.get("kind") == "Service"}
    gw_ns, svc_ns = {ns for ns, _ in gateways}, {ns for ns, _ in services}

    def service_ref(obj, path, ref, ns, port):
        if (ns, ref.get("name")) not in services:
            yield obj, path, f"Not found: Service {ns}/{ref.get('name')} is not in this set"
        elif isinstance(port, int):
            numbers = [p.get("port") for p in (services[(ns, ref.get("name"))].get("spec") or {}).get("ports") or []]
            if port not in numbers:
                yield obj, child(path, "port"), f"Invalid value: {port}: Service {ns}/{ref.get('name')} has ports {numbers}"

    for obj in objects:
        spec, ns = obj.get("spec") or {}, namespace_of(obj)
        if group_of(obj) == GATEWAY_API and obj.get("kind", "").endswith("Route"):
            for i, ref in enumerate(spec.get("parentRefs") or []):
                path = index("spec.parentRefs", i)
                if ref.get("group", GATEWAY_API) != GATEWAY_API or ref.get("kind", "Gateway") != "Gateway":
                    continue
                gns = ref.get("namespace", ns)
                if gns not in gw_ns:
                    continue
                gw = gateways.get((gns, ref.get("name")))
                if gw is None:
                    yield obj, path, f"Not found: Gateway {gns}/{ref.get('name')} is not in this set"
                    continue
                listeners = (gw.get("spec") or {}).get("listeners") or []
                if "sectionName" in ref and ref["sectionName"] not in [l.get("name") for l in listeners]:
                    yield obj, child(path, "sectionName"), (
                        f"Not found: {ref['sectionName']!r}: Gateway {gns}/{ref.get('name')} has listeners "
                        f"{[l.get('name') for l in listeners]}")
                if "port" in ref and ref["port"] not in [l.get("port") for l in listeners]:
                    yield obj, child(path, "port"), f"Not found: {ref['port']}: no listener on that port"
            for i, rule in enumerate(spec.get("rules") or []):
                for j, ref in enumerate(rule.get("backendRefs") or []):
                    if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
                        continue
                    bns = ref.get("namespace", ns)
                    if bns in svc_ns:
                        yield from service_ref(obj, f"spec.rules[{i}].backendRefs[{j}]", ref, bns, ref.get("port"))
        elif group_of(obj).endswith("istio.io"):
            refs = list(spec.get("targetRefs") or []) + ([spec["targetRef"]] if isinstance(spec.get("targetRef"), dict) else [])
            for i, ref in enumerate(refs):
                path = index("spec.targetRefs", i) if i < len(spec.get("targetRefs") or []) else "spec.targetRef"
                group, kind = ref.get("group", ""), ref.get("kind")
                if group == GATEWAY_API and kind == "Gateway" and ns in gw_ns and (ns, ref.get("name")) not in gateways:
                    yield obj, path, f"Not found: Gateway {ns}/{ref.get('name')} is not in this set"
                if group == "" and kind == "Service" and ns in svc_ns:
                    yield from service_ref(obj, path, ref, ns, None)


def pod_references_exist(objects: list[dict], pods: Pods) -> Iterable[Finding]:
    """A pod naming a ServiceAccount, Secret or ConfigMap that does not exist is never started
    (the ReplicaSet cannot create it, or it hangs in ContainerCreating). Judged only where the set
    defines objects of that kind in the pod's namespace: elsewhere they may be created apart."""
    have: dict[tuple[str, str], set[str]] = {}
    for o in objects:
        have.setdefault((o.get("kind"), namespace_of(o)), set()).add(name_of(o))

    def missing(kind, ns, name):
        names = have.get((kind, ns))
        return names is not None and name not in names

    for obj in objects:
        ns = namespace_of(obj)
        for spec_path, _, _, spec in pod_spec_paths(obj):
            sa = spec.get("serviceAccountName")
            if sa and sa != "default" and missing("ServiceAccount", ns, sa):
                yield obj, f"{spec_path}.serviceAccountName", f"Not found: {sa!r}: no ServiceAccount of that name in namespace {ns!r} of this set"
            for i, v in enumerate(spec.get("volumes") or []):
                for kind, field, name_key in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
                    src = v.get(field)
                    if isinstance(src, dict) and not src.get("optional") and missing(kind, ns, src.get(name_key)):
                        yield obj, f"{spec_path}.volumes[{i}].{field}.{name_key}", (
                            f"Not found: {src.get(name_key)!r}: no {kind} of that name in namespace {ns!r} of this set")
            for group in ("initContainers", "containers"):
                for i, c in enumerate(spec.get(group) or []):
                    for j, env in enumerate(c.get("env") or []):
                        for kind, ref_key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                            ref = (env.get("valueFrom") or {}).get(ref_key)
                            if isinstance(ref, dict) and not ref.get("optional") and missing(kind, ns, ref.get("name")):
                                yield obj, f"{spec_path}.{group}[{i}].env[{j}].valueFrom.{ref_key}.name", (
                                    f"Not found: {ref.get('name')!r}: no {kind} of that name in namespace {ns!r} of this set")


def role_bindings_resolve(objects: list[dict], pods: Pods) -> Iterable[Finding]:
    """A RoleBinding whose roleRef names a Role or ClusterRole that does not exist grants
    nothing, and the API server accepts it: the workload then fails its API calls with 403.
    ClusterRoles that every cluster has (cluster-admin, admin, edit, view, system:*) are known."""
    roles = {(o.get("kind"), namespace_of(o), name_of(o)) for o in objects
             if o.get("kind") in ("Role", "ClusterRole")}
    for obj in objects:
        if obj.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ref = obj.get("roleRef") or {}
        kind, name = ref.get("kind"), ref.get("name", "")
        if kind == "ClusterRole" and (name in BUILTIN_CLUSTER_ROLES or name.startswith("system:")):
            continue
        ns = namespace_of(obj) if kind == "Role" else ""
        if (kind, ns, name) not in roles:
            yield obj, "roleRef", f"Not found: {kind} {name!r}{f' in namespace {ns!r}' if ns else ''} is not in this set"


CHECKS = (
    workload_selector_matches_template,
    probe_ports_are_named_container_ports,
    service_target_ports_exist,
    selectors_select_pods,
    hpa_targets_exist,
    istio_destinations_exist,
    gateway_api_refs_exist,
    pod_references_exist,
    role_bindings_resolve,
)


def check(objects: list[dict]) -> list[Finding]:
    pods = Pods(objects)
    return [f for c in CHECKS for f in c(objects, pods)]
