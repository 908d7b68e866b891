"""Every manifest under istio/ would be accepted by the API server on `kubectl apply`.

The validator (testenv/k8s/) renders each kustomization with `kubectl kustomize` and checks every
object as the API server would with strict field validation: Istio and Gateway API kinds against
the vendored CRDs' structural schemas and CEL rules (testenv/crds/), built-in kinds against
Kubernetes 1.33's schemas, plus cross-object checks. Kustomizations are discovered, so a new
overlay is covered by the parametrised tests without editing this file.

The planted-error tests prove the validator can fail: each mutates a copy of a real overlay's
rendered objects and requires an error at the named field that the unmutated objects do not
have. The CEL tables pin the Kubernetes CEL functions testenv/k8s/cel_ext.py implements.
"""
from __future__ import annotations

import copy
import functools
import shutil
import time
from pathlib import Path

import pytest
import yaml
from celpy import celtypes

from k8s import builtin, cel_ext, crds, structural
from k8s.validate import (
    describe,
    kustomizations,
    render_with_warnings,
    schema_source,
    standalone_files,
    validate,
    validate_file,
    validate_kustomization,
)

REPO = Path(__file__).resolve().parents[2]
ISTIO = REPO / "istio"
KUSTOMIZATIONS = kustomizations(ISTIO)
GATEWAY_API = "gateway.networking.k8s.io"
STANDALONE = standalone_files(ISTIO)


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


# Standalone manifests that are not API objects, with why: the test below requires the skipped
# set to be exactly this, so a new one is added here knowingly, never skipped silently.
EXPECTED_SKIPPED = {
    ("istio/istio-operator.yaml", "IstioOperator", "wsgate"):
        "an istioctl input (`istioctl install -f istio/istio-operator.yaml`), never applied",
}


@functools.lru_cache(maxsize=None)
def _rendered(directory: Path) -> tuple[list[dict], list[str]]:
    return render_with_warnings(directory)


def rendered(relpath: str) -> list[dict]:
    """A deep copy of what `kubectl kustomize istio/<relpath>` renders (rendered once)."""
    return copy.deepcopy(_rendered(ISTIO / relpath)[0])


def first_rendering(*kinds: str) -> list[dict] | None:
    """The rendered objects of the first discovered kustomization holding each of `kinds`."""
    for d in KUSTOMIZATIONS:
        objs = _rendered(d)[0]
        if set(kinds) <= {o.get("kind") for o in objs}:
            return copy.deepcopy(objs)
    return None


def find(objs: list[dict], kind: str, name: str | None = None, group: str | None = None) -> dict:
    for o in objs:
        if (o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)
                and (group is None or o["apiVersion"].rpartition("/")[0] == group)):
            return o
    raise AssertionError(f"no {kind} {name or ''} in {[describe(o) for o in objs]}")


# --- the manifests as they are --------------------------------------------------------------------


def test_discovery_finds_the_layouts():
    found = {rel(d) for d in KUSTOMIZATIONS}
    assert {"istio/base", "istio/overlays/central", "istio/overlays/pod-side"} <= found, found
    assert rel(ISTIO / "istio-operator.yaml") in {rel(p) for p in STANDALONE}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=rel)
def test_kustomization_is_accepted(directory):
    t = validate_kustomization(directory)
    assert t.objects, f"{rel(directory)} rendered nothing"
    assert not t.errors, f"{rel(directory)}: {len(t.errors)} error(s):\n" + "\n".join(t.errors)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=rel)
def test_kustomization_is_accepted_by_istio_master(directory):
    """The same objects against Istio master's CRDs: what a newer Istio would refuse, reported
    apart from the 1.27.3 verdict above."""
    objs = _rendered(directory)[0]
    if not any(str(o.get("apiVersion", "")).rpartition("/")[0].endswith("istio.io") for o in objs):
        pytest.skip("no Istio objects")
    errors = validate(copy.deepcopy(objs), istio="master")
    assert not errors, f"{rel(directory)} against Istio master:\n" + "\n".join(errors)


@pytest.mark.parametrize("path", STANDALONE, ids=rel)
def test_standalone_manifest_is_accepted_or_listed(path):
    t = validate_file(path)
    assert not t.errors, f"{rel(path)}:\n" + "\n".join(t.errors)
    for obj, reason in t.skipped:
        assert (rel(path), obj["kind"], obj["metadata"]["name"]) in EXPECTED_SKIPPED, (
            f"{rel(path)}: {describe(obj)} is skipped as not an API object ({reason}); "
            f"list it in EXPECTED_SKIPPED if that is right")


def test_skipped_objects_are_exactly_the_listed_ones():
    skipped = {}
    for path in STANDALONE:
        for obj, reason in validate_file(path).skipped:
            skipped[(rel(path), obj["kind"], obj["metadata"]["name"])] = reason
    assert set(skipped) == set(EXPECTED_SKIPPED), (skipped, EXPECTED_SKIPPED)
    for k, reason in skipped.items():
        print(f"not an API object, skipped: {k[0]} {k[1]}/{k[2]}: {reason}")


def test_an_unknown_kind_in_a_standalone_file_is_an_error_not_a_skip(tmp_path):
    f = tmp_path / "thing.yaml"
    f.write_text("apiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: g\n")
    t = validate_file(f)
    assert not t.skipped
    assert any("no schema for example.com/v1 Gadget" in e for e in t.errors), t.errors


def test_a_repeated_key_in_a_standalone_file_is_an_error(tmp_path):
    """kubectl's strict decoding refuses a field given twice; PyYAML alone would keep the last."""
    f = tmp_path / "dup.yaml"
    f.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  name: b\n")
    assert any("duplicate field 'name'" in e for e in validate_file(f).errors)


def test_a_new_overlay_is_discovered_and_kustomize_warnings_are_errors(tmp_path):
    """Discovery picks up a kustomization nobody listed, and a deprecated kustomize field
    (here `patchesStrategicMerge`) fails it, as kustomize's warning says it will stop working."""
    overlay = tmp_path / "overlays" / "new"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [str(ISTIO / "overlays" / "central")],
        "patchesStrategicMerge": ["patch.yaml"],
    }))
    (overlay / "patch.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: wsgate-sidecar\n"
        "  namespace: wsgate-system\nspec:\n  replicas: 3\n")
    (tmp_path / "stray.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: stray\n")
    assert kustomizations(tmp_path) == [overlay]
    assert standalone_files(tmp_path) == [tmp_path / "stray.yaml"]  # patch.yaml is used
    t = validate_kustomization(overlay)
    assert any("patchesStrategicMerge" in e and "deprecated" in e for e in t.errors), t.errors


# --- planted errors ---------------------------------------------------------------------------------


def new_errors(objs: list[dict], mutate) -> list[str]:
    """Errors of the mutated copy that the original does not have."""
    before = set(validate(copy.deepcopy(objs)))
    after = copy.deepcopy(objs)
    mutate(after)
    return [e for e in validate(after) if e not in before]


def assert_caught(objs, mutate, path: str, *words: str) -> str:
    errors = new_errors(objs, mutate)
    hits = [e for e in errors if f": {path}: " in e and all(w in e for w in words)]
    assert hits, f"no error at {path} containing {words}; new errors: {errors}"
    return hits[0]


@pytest.fixture
def central():
    return rendered("overlays/central")


def test_unknown_field_in_a_virtualservice_spec(central):
    def plant(objs):
        find(objs, "VirtualService")["spec"]["corsPolicyy"] = {"allowOrigins": []}
    e = assert_caught(central, plant, "spec.corsPolicyy", 'unknown field "spec.corsPolicyy"')
    assert e.startswith("VirtualService istio-system/wsgate-ssh: "), e


def test_zero_timeout_in_a_virtualservice_route_breaks_its_cel_rule(central):
    def timeout(value):
        return lambda objs: find(objs, "VirtualService")["spec"]["http"][0].__setitem__("timeout", value)

    # A valid timeout is accepted: the rule is what rejects 0s, not the field.
    assert not [e for e in new_errors(central, timeout("30s")) if "timeout" in e]
    assert not [e for e in new_errors(central, timeout("1h2m3.5s")) if "timeout" in e]
    e = assert_caught(central, timeout("0s"), "spec.http[0].timeout",
                      "must be a valid duration greater than 1ms", "duration(self) >= duration('1ms')")
    assert 'Invalid value: "0s"' in e
    assert_caught(central, timeout("500us"), "spec.http[0].timeout", "greater than 1ms")
    # Not a Go duration: the rule cannot be evaluated, which is an error too (the API server's
    # duration() refuses "1d").
    assert_caught(central, timeout("1d"), "spec.http[0].timeout", "could not be evaluated", "unknown unit")


def test_unknown_field_in_a_deployment_container(central):
    def plant(objs):
        find(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert_caught(central, plant, "spec.template.spec.containers[0].imagePullPolicyy", "unknown field")


def test_enum_violation_in_a_wasmplugin(central):
    def plant(objs):
        find(objs, "WasmPlugin")["spec"]["phase"] = "BOGUS"
    assert_caught(central, plant, "spec.phase", 'Unsupported value: "BOGUS"', '"AUTHN"')


def test_missing_required_fields(central):
    def no_url(objs):
        del find(objs, "WasmPlugin")["spec"]["url"]
    assert_caught(central, no_url, "spec.url", "Required value")

    def no_host(objs):
        del find(objs, "VirtualService")["spec"]["http"][0]["route"][0]["destination"]["host"]
    assert_caught(central, no_host, "spec.http[0].route[0].destination.host", "Required value")

    def no_selector(objs):
        del find(objs, "Deployment")["spec"]["selector"]
    assert_caught(central, no_selector, "spec.selector", "Required value")


def test_istio_only_one_of(central):
    """Istio's CRDs say "only one of" with oneOf + not/anyOf of required fields."""
    def plant(objs):
        find(objs, "VirtualService")["spec"]["http"][0]["match"] = [{"uri": {"exact": "/a", "prefix": "/b"}}]
    assert_caught(central, plant, "spec.http[0].match[0].uri", "oneOf", "only one of exact, prefix, regex")


def test_unknown_field_in_custom_resource_metadata(central):
    def plant(objs):
        find(objs, "VirtualService")["metadata"]["labelz"] = {"a": "b"}
    assert_caught(central, plant, "metadata.labelz", "unknown field")


def test_preserved_fields_take_anything(central):
    """`x-kubernetes-preserve-unknown-fields` (WasmPlugin pluginConfig) is not pruned."""
    def plant(objs):
        find(objs, "WasmPlugin")["spec"]["pluginConfig"]["anyNewSetting"] = {"deep": [1, {"x": None}]}
    assert new_errors(central, plant) == []


def test_deployment_selector_must_match_its_template(central):
    def plant(objs):
        labels = find(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        labels["app.kubernetes.io/name"] = "something-else"
    assert_caught(central, plant, "spec.template.metadata.labels", "`selector` does not match template `labels`")


def test_probe_must_name_a_port_of_its_container(central):
    def plant(objs):
        c = find(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        c["readinessProbe"]["httpGet"]["port"] = "http-metrics"
    assert_caught(central, plant, "spec.template.spec.containers[0].readinessProbe.httpGet.port",
                  "'http-metrics'", "not a named containerPort")


def test_service_target_port_must_exist_in_the_selected_pods(central):
    def plant(objs):
        find(objs, "Service")["spec"]["ports"][0]["targetPort"] = "http-wss"
    assert_caught(central, plant, "spec.ports[0].targetPort", "'http-wss'", "no container port of that name")


def test_selectors_must_select_a_pod(central):
    def pdb(objs):
        find(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] = {"app": "wsgate"}
    assert_caught(central, pdb, "spec.selector", "selects no pod")

    def netpol(objs):
        find(objs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"] = {"app": "wsgate"}
    assert_caught(central, netpol, "spec.podSelector", "selects no pod")


def test_selectors_are_not_judged_where_the_set_has_no_pods():
    """istio/base alone: its objects select the ingress gateway's pods, which istioctl installs;
    nothing to judge, so nothing reported."""
    assert validate(rendered("base")) == []


def test_istio_destination_must_be_a_service_of_the_set(central):
    def plant(objs):
        find(objs, "VirtualService")["spec"]["http"][0]["route"][0]["destination"]["port"]["number"] = 8081
    assert_caught(central, plant, "spec.http[0].route[0].destination.port.number", "8081")


def test_strict_schema_for_builtin_kinds(central):
    def plant(objs):
        find(objs, "Service")["spec"]["ports"][0]["protocl"] = "TCP"
    assert_caught(central, plant, "spec.ports[0].protocl", "unknown field")

    def bad_type(objs):
        find(objs, "Deployment")["spec"]["replicas"] = "two"
    assert_caught(central, bad_type, "spec.replicas", "must be of type integer")

    def bad_port(objs):
        find(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"] = "HTTP_WS"
    assert_caught(central, bad_port, "spec.template.spec.containers[0].ports[0].name", "IANA_SVC_NAME")


def test_a_kind_or_version_without_a_schema_is_an_error(central):
    def new_version(objs):
        find(objs, "VirtualService")["apiVersion"] = "networking.istio.io/v2"
    assert_caught(central, new_version, "apiVersion", "no schema for networking.istio.io/v2 VirtualService")

    def unknown(objs):
        objs.append({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}})
    errors = new_errors(central, unknown)
    assert any("no schema for example.com/v1 Gadget" in e for e in errors), errors


def httproute_set(central: list[dict]) -> list[dict]:
    """The rendering of the overlay that ships HTTPRoutes (the planted errors need a real one)."""
    objs = first_rendering("HTTPRoute", "Gateway", "Service")
    assert objs is not None, "no overlay under istio/ renders HTTPRoutes any more"
    return objs


def routed_rule(objs: list[dict]) -> tuple[int, dict, dict]:
    """(index, rule, route) of the first HTTPRoute rule that has backendRefs."""
    for o in objs:
        if o.get("kind") == "HTTPRoute":
            for i, r in enumerate(o["spec"].get("rules") or []):
                if r.get("backendRefs"):
                    return i, r, o
    raise AssertionError("no HTTPRoute rule with backendRefs")


def test_httproute_unknown_field_and_cel_rules(central):
    objs = httproute_set(central)
    i, _, route = routed_rule(objs)
    name = route["metadata"]["name"]
    assert validate(copy.deepcopy(objs)) == [], "the HTTPRoute set must be valid before planting"

    def unknown(o):
        r = find(o, "HTTPRoute", name)["spec"]["rules"][i]
        r["backendReffs"] = r["backendRefs"]
    assert_caught(objs, unknown, f"spec.rules[{i}].backendReffs", "unknown field")

    def redirect_with_backends(o):
        r = find(o, "HTTPRoute", name)["spec"]["rules"][i]
        r["filters"] = [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]
    assert_caught(objs, redirect_with_backends, f"spec.rules[{i}]",
                  "RequestRedirect filter must not be used together with backendRefs")

    def filter_type_mismatch(o):
        r = find(o, "HTTPRoute", name)["spec"]["rules"][i]
        r["filters"] = [{"type": "URLRewrite", "requestRedirect": {"scheme": "https"}}]
    assert_caught(objs, filter_type_mismatch, f"spec.rules[{i}].filters[0]",
                  "filter.requestRedirect must be nil if the filter.type is not RequestRedirect")

    def timeouts(o):
        find(o, "HTTPRoute", name)["spec"]["rules"][i]["timeouts"] = {"request": "10s", "backendRequest": "1m"}
    assert_caught(objs, timeouts, f"spec.rules[{i}].timeouts",
                  "backendRequest timeout cannot be longer than request timeout")

    def no_port(o):
        del find(o, "HTTPRoute", name)["spec"]["rules"][i]["backendRefs"][0]["port"]
    # The rule reads `group` and `kind`, which the manifest leaves out: it only fires because
    # their defaults ("" and "Service") are applied before validation, as the API server does.
    assert_caught(objs, no_port, f"spec.rules[{i}].backendRefs[0]", "Must have port for Service reference")


def test_gateway_listener_names_are_a_list_map(central):
    objs = httproute_set(central)

    n = len(find(objs, "Gateway", group=GATEWAY_API)["spec"]["listeners"])

    def dup(o):
        listeners = find(o, "Gateway", group=GATEWAY_API)["spec"]["listeners"]
        listeners.append(dict(listeners[0], port=8080))
    errors = new_errors(objs, dup)
    assert any(f": spec.listeners[{n}]: Duplicate value" in e for e in errors), errors
    assert any("Listener name must be unique within the Gateway" in e for e in errors), errors


def test_httproute_parent_and_backend_must_exist(central):
    objs = httproute_set(central)
    i, _, route = routed_rule(objs)
    name = route["metadata"]["name"]

    def parent(o):
        find(o, "HTTPRoute", name)["spec"]["parentRefs"][0]["name"] = "no-such-gateway"
    assert_caught(objs, parent, "spec.parentRefs[0]", "Gateway", "no-such-gateway", "not in this set")

    def backend(o):
        find(o, "HTTPRoute", name)["spec"]["rules"][i]["backendRefs"][0]["port"] = 9999
    assert_caught(objs, backend, f"spec.rules[{i}].backendRefs[0].port", "9999")


def trafficextension_set(central: list[dict]) -> list[dict]:
    """The rendering of the overlay that ships a TrafficExtension (the planted errors need a real one)."""
    objs = first_rendering("TrafficExtension")
    assert objs is not None, "no overlay under istio/ renders a TrafficExtension any more"
    return objs


def test_trafficextension_uses_the_master_bundle(central):
    objs = trafficextension_set(central)
    te = find(objs, "TrafficExtension")
    assert schema_source(te).startswith("istio-master-"), schema_source(te)
    assert validate(copy.deepcopy(objs)) == []

    def both(o):
        find(o, "TrafficExtension")["spec"]["lua"] = {"inlineCode": "function envoy_on_request(h) end"}
    assert_caught(objs, both, "spec", "exactly one of wasm or lua must be set")

    def bad_url(o):
        find(o, "TrafficExtension")["spec"]["wasm"]["url"] = "ftp://example.com/filter.wasm"
    assert_caught(objs, bad_url, "spec.wasm.url", "url must have schema one of")


def hpa_set(central: list[dict]) -> list[dict]:
    """The rendering of the overlay that ships a HorizontalPodAutoscaler (the planted errors need a real one)."""
    objs = first_rendering("HorizontalPodAutoscaler", "Deployment")
    assert objs is not None, "no overlay under istio/ renders a HorizontalPodAutoscaler any more"
    return objs


def test_hpa_target_must_exist_and_replicas_must_be_ordered(central):
    objs = hpa_set(central)
    assert validate(copy.deepcopy(objs)) == []

    def target(o):
        find(o, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] = "wsgate-sidecarr"
    assert_caught(objs, target, "spec.scaleTargetRef", "Not found", "wsgate-sidecarr")

    def order(o):
        spec = find(o, "HorizontalPodAutoscaler")["spec"]
        spec["minReplicas"], spec["maxReplicas"] = 5, 2
    assert_caught(objs, order, "spec.maxReplicas", "greater than or equal to `minReplicas`")


def test_errors_name_object_and_path(central):
    def plant(objs):
        find(objs, "WasmPlugin")["spec"]["phase"] = "BOGUS"
    (e,) = new_errors(central, plant)
    assert e.startswith("WasmPlugin istio-system/wsgate: spec.phase: Unsupported value"), e


def test_the_whole_tree_validates_quickly():
    """Rendering aside, validating every rendered set takes well under a minute."""
    sets = [copy.deepcopy(_rendered(d)[0]) for d in KUSTOMIZATIONS]
    start = time.monotonic()
    for objs in sets:
        validate(objs)
    assert time.monotonic() - start < 20


# --- CEL: the Kubernetes functions cel_ext implements ----------------------------------------------

CEL_TRUE = [
    "duration('1h2m3.5s') == duration('3723500ms')",
    "duration('0s') < duration('1ms')",
    "duration('999us') < duration('1ms')",
    "duration('1000000ns') == duration('1ms')",
    "duration('1ms') >= duration('1ms')",
    "duration('-1.5h') < duration('0')",
    "duration('.5s') == duration('500ms')",
    "duration('1µs') == duration('1us')",
    "'a/b/c'.split('/') == ['a', 'b', 'c']",
    "'a/b/c'.split('/', 2) == ['a', 'b/c']",
    "'example.com/name'.split('/')[0].size() < 253",
    "'unix:///var/run/x.sock'.substring(7, 8) == '/'",
    "'hello'.substring(2) == 'llo'",
    "'HeLLo-Ä'.lowerAscii() == 'hello-Ä'",
    "'abc'.upperAscii() == 'ABC'",
    "'abcabc'.indexOf('c') == 2 && 'abcabc'.lastIndexOf('c') == 5",
    "'a-b-c'.replace('-', '+') == 'a+b+c'",
    "['a', 'b'].join('/') == 'a/b'",
    "'  x '.trim() == 'x'",
    "'abc'.matches('b') && !'abc'.matches('^b')",
    "'x123y'.find('[0-9]+') == '123'",
    "isURL('oci://ghcr.io/wsgate/wsgate-filter:0.1.0')",
    "url('oci://ghcr.io/wsgate/wsgate-filter:0.1.0').getScheme() == 'oci'",
    "isURL('file:///var/local/wsgate/wsgate-filter.wasm')",
    "!isURL('ghcr.io/wsgate/filter') && isURL('http://ghcr.io/wsgate/filter')",
    "!isURL('http://a b/')",
    "!isURL('')",
    "url('https://h.example:8443/a%20b?x=1').getHost() == 'h.example:8443'",
    "url('https://h.example:8443/a%20b?x=1').getHostname() == 'h.example'",
    "url('https://h.example:8443/a%20b?x=1').getPort() == '8443'",
    "url('https://h.example:8443/a%20b?x=1').getEscapedPath() == '/a%20b'",
    "url('https://h.example/?x=1&x=2').getQuery() == {'x': ['1', '2']}",
    "url('https://[::1]:80/').getHostname() == '::1'",
    "ip('10.0.0.1').family() == 4 && ip('::1').isLoopback()",
    "!isIP('::ffff:1.2.3.4') && !isIP('fe80::1%eth0') && isIP('fe80::1')",
    "ip('10.1.2.3').isGlobalUnicast() && !ip('0.0.0.0').isGlobalUnicast()",
    "cidr('10.0.0.0/8').containsIP('10.1.2.3') && !cidr('10.0.0.0/8').containsIP('11.0.0.1')",
    "cidr('10.0.0.0/8').containsCIDR('10.1.0.0/16') && cidr('10.0.0.1/8').masked() == cidr('10.0.0.0/8')",
    "isCIDR('192.168.0.0/16') && !isCIDR('192.168.0.0') && !isCIDR('10.0.0.0/33')",
    "quantity('1') == quantity('1000m') && quantity('1Gi').isGreaterThan(quantity('1G'))",
    "quantity('500m').sign() == 1 && !quantity('500m').isInteger() && quantity('2k').asInteger() == 2000",
    "isQuantity('1E3') && !isQuantity('1e') && !isQuantity('1.2.3')",
    "[1, 2, 3].isSorted() && [1, 2, 3].sum() == 6 && [1, 2, 3].indexOf(2) == 1",
    "[1, 2, 2].exists_one(x, x == 1) && [1, 2, 2].filter(x, x == 2).size() == 2",
]

CEL_ERRORS = [
    ("duration('1d')", "unknown unit"),
    ("duration('')", "invalid duration"),
    ("duration('1')", "missing unit"),
    ("duration('.s')", "invalid duration"),
    ("duration('9999999999h')", "invalid duration"),
    ("'hello'.substring(4, 9)", "index out of range"),
    ("'hello'.substring(3, 2)", "invalid substring range"),
    ("url('ghcr.io/x')", "URL parse error"),
    ("ip('10.0.0.256')", ""),
    ("quantity('1.5').asInteger()", "cannot convert"),
    ("'x'.format([1])", "does not compile"),
    ("sets.contains([1], [1])", ""),
    ("self.size(", "does not compile"),
]


@pytest.mark.parametrize("expr", CEL_TRUE)
def test_cel_function_is_true(expr):
    result = cel_ext.evaluate(expr, {})
    assert isinstance(result, celtypes.BoolType) and bool(result) is True, result


@pytest.mark.parametrize("expr,words", CEL_ERRORS)
def test_cel_function_errors(expr, words):
    with pytest.raises(cel_ext.CELError, match=words or None):
        cel_ext.evaluate(expr, {})


@pytest.mark.parametrize("text,nanos", [
    ("0", 0), ("0s", 0), ("1ns", 1), ("1.5us", 1500), ("3.5s", 3_500_000_000),
    ("1h2m3.5s", 3_723_500_000_000), ("-2m", -120_000_000_000), ("+1ms", 1_000_000),
])
def test_go_duration_parsing(text, nanos):
    assert cel_ext.parse_go_duration(text) == nanos


@pytest.mark.parametrize("name,escaped", [
    ("namespace", "__namespace__"), ("in", "__in__"), ("x-kubernetes", "x__dash__kubernetes"),
    ("a.b/c", "a__dot__b__slash__c"), ("a__b", "a__underscores__b"), ("plain", "plain"),
    ("@type", None), ("1st", None),
])
def test_cel_property_escaping(name, escaped):
    assert structural.escape_property(name) == escaped


def _all_rules() -> list[tuple[str, str]]:
    out = {}

    def walk(node, source):
        if isinstance(node, dict):
            for r in node.get("x-kubernetes-validations") or []:
                out.setdefault(r["rule"], source)
            for v in node.values():
                walk(v, source)
        elif isinstance(node, list):
            for v in node:
                walk(v, source)

    for path in crds.files():
        for crd in crds._load_file(path):
            walk(crd.schema, path.name)
    return sorted(out.items())


def test_every_vendored_cel_rule_compiles_with_known_functions():
    """Each rule in testenv/crds/ parses, and every function it calls is implemented: a CRD update
    that brings a new function fails here, not by silently passing objects."""
    rules = _all_rules()
    assert len(rules) > 50, len(rules)
    problems = []
    for rule, source in rules:
        try:
            cel_ext.compile_rule(rule)
        except cel_ext.CELError as e:
            problems.append(f"{source}: {rule!r}: {e}")
    assert not problems, "\n".join(problems)


def test_a_rule_that_cannot_compile_or_run_is_an_error():
    schema = {"type": "object", "properties": {"a": {"type": "string"}},
              "x-kubernetes-validations": [{"rule": "self.a.format([1]) == 'x'", "message": "m1"},
                                           {"rule": "self.b == 1", "message": "m2"}]}
    errs = []
    structural.validate({"a": "x"}, schema, "spec", errs)
    assert any("does not compile" in m and "format" in m for _, m in errs), errs
    assert any("could not be evaluated" in m and "self.b == 1" in m for _, m in errs), errs


def test_transition_rules_are_not_run_on_create():
    schema = {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}]}
    errs = []
    structural.validate("v", schema, "spec.x", errs)
    assert errs == []


def test_builtin_kinds_use_kubernetes_1_33_schemas():
    """kind v0.29.0 runs Kubernetes 1.33 by default; kubernetes-validate ships that schema set."""
    assert builtin.KUBE_VERSION == "1.33"
    assert builtin.schema_version() == "1.33.0"
    assert crds.istio_versions() == ["1.27.3", "master"]


def test_kubectl_present():
    assert shutil.which("kubectl"), "kubectl missing: run testenv/setup.sh (make test does)"
