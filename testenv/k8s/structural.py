"""Validate a custom resource against its CRD's structural schema, as the API server does.

On `kubectl apply` (server-side field validation: Strict, kubectl's default) the API server
handles a custom resource in this order, and so does `validate_custom_resource`:

1. Pruning: a field the schema does not declare is an error (`unknown field "spec.x"`), except
   below `x-kubernetes-preserve-unknown-fields: true`. A map (`additionalProperties`) takes any
   key. A `null` for a field that is not `nullable` and has no `default` is dropped.
2. Defaulting: `default` values are filled in, for absent fields and for non-nullable nulls, from
   the root down (a defaulted object gets its own fields' defaults too).
3. Validation (k8s.io/kube-openapi's validator): `type` (with `x-kubernetes-int-or-string`,
   `nullable`), `enum`, `required`, `pattern` (RE2, unanchored), `format` (the string formats
   the API server checks: date-time, date, ipv4, ipv6, cidr, byte, uuid, uri; others, such as
   int32 or double, are not checked by the API server either), min/max length/items/properties,
   minimum/maximum (exclusive too), multipleOf, `allOf`/`anyOf`/`oneOf`/`not` (Istio's CRDs say
   "only one of" with `oneOf: [not: {anyOf: [required...]}, required...]`),
   `x-kubernetes-list-type` set/map uniqueness.
4. CEL: every `x-kubernetes-validations` rule of every node present in the object, with `self`
   bound to the value there (cel_ext.py), after defaulting. Property names are escaped as
   Kubernetes does (`namespace` -> `__namespace__`, `a-b` -> `a__dash__b`).

Metadata is not in the CRD schema: the caller validates it as an ObjectMeta.
Paths are written the API server's way: `spec.http[0].route[0].destination.host`, map keys as
`spec.selector.matchLabels[app]`.
"""
from __future__ import annotations

import base64
import copy
import datetime
import functools
import ipaddress
import json
import re
from typing import Any

import celpy.celtypes as ct
import re2

from . import cel_ext

Errors = list  # of (path, message)


def child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def key(path: str, k: str) -> str:
    return f"{path}[{k}]"


def show(value: Any) -> str:
    """A value in an error message: scalars as JSON, containers by type, as the API server."""
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + '..."'


# --- 1. pruning -----------------------------------------------------------------------------------

ROOT_META = ("apiVersion", "kind", "metadata")


def prune(x: Any, s: dict, path: str, errs: Errors, root: bool = False) -> None:
    """Report (and remove) unknown fields; drop non-nullable nulls that have no default."""
    if isinstance(x, dict):
        props = s.get("properties") or {}
        addl = s.get("additionalProperties")
        preserve = s.get("x-kubernetes-preserve-unknown-fields") is True
        for k in list(x):
            if root and k in ROOT_META:
                continue
            p = child(path, k)
            if k in props:
                ps = props[k]
            elif isinstance(addl, dict):
                ps, p = addl, key(path, k)
            elif preserve or addl is True:
                continue  # kept as written, and nothing below it is pruned
            else:
                errs.append((p, f'unknown field "{p}"'))
                del x[k]
                continue
            if x[k] is None and not ps.get("nullable") and "default" not in ps:
                del x[k]
                continue
            prune(x[k], ps, p, errs)
    elif isinstance(x, list) and isinstance(s.get("items"), dict):
        for i, v in enumerate(x):
            prune(v, s["items"], index(path, i), errs)


# --- 2. defaulting -----------------------------------------------------------------------------------


def _non_nullable_null(v: Any, s: dict) -> bool:
    return v is None and not s.get("nullable")


def apply_defaults(x: Any, s: dict) -> None:
    if isinstance(x, dict):
        props = s.get("properties") or {}
        for k, ps in props.items():
            if "default" in ps and (k not in x or _non_nullable_null(x[k], ps)):
                x[k] = copy.deepcopy(ps["default"])
        addl = s.get("additionalProperties")
        for k in list(x):
            if k in props:
                apply_defaults(x[k], props[k])
            elif isinstance(addl, dict):
                if _non_nullable_null(x[k], addl) and "default" in addl:
                    x[k] = copy.deepcopy(addl["default"])
                apply_defaults(x[k], addl)
    elif isinstance(x, list) and isinstance(s.get("items"), dict):
        items = s["items"]
        for i, v in enumerate(x):
            if _non_nullable_null(v, items) and "default" in items:
                x[i] = copy.deepcopy(items["default"])
            apply_defaults(x[i], items)


# --- 3. validation ------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


_TYPE_OK = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": _is_int,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


@functools.lru_cache(maxsize=1024)
def _pattern(p: str):
    return re2.compile(p)


def _is_date(s: str) -> bool:
    try:
        datetime.date.fromisoformat(s)
        return bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", s))
    except ValueError:
        return False


_TIME = re.compile(r"^(\d{2}):(\d{2}):(\d{2})(\.\d+)?(z|[+-]\d{2}:\d{2})$")


def _is_datetime(s: str) -> bool:
    # kube-openapi strfmt.IsDateTime: RFC 3339 date, "t", time with a zone.
    parts = s.lower().split("t")
    if len(s) < 4 or len(parts) != 2 or not _is_date(parts[0]):
        return False
    m = _TIME.match(parts[1])
    return bool(m) and int(m.group(1)) <= 23 and int(m.group(2)) <= 59 and int(m.group(3)) <= 59


def _is_ip(s: str, version: int) -> bool:
    if "%" in s:
        return False
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return ("." in s) if version == 4 else (":" in s)


def _is_cidr(s: str) -> bool:
    try:
        ipaddress.ip_network(s, strict=False)
        return "/" in s
    except ValueError:
        return False


def _is_byte(s: str) -> bool:
    try:
        base64.b64decode(s, validate=True)
        return True
    except ValueError:
        return False


def _is_uri(s: str) -> bool:
    try:
        cel_ext.URL(s)
        return True
    except ValueError:
        return False


_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")

# The string formats the API server validates that these CRDs use, plus a few common ones.
# Unknown formats (and numeric ones such as int32, double) are ignored, as by the API server.
FORMATS = {
    "date-time": _is_datetime,
    "datetime": _is_datetime,
    "date": _is_date,
    "ipv4": lambda s: _is_ip(s, 4),
    "ipv6": lambda s: _is_ip(s, 6),
    "cidr": _is_cidr,
    "byte": _is_byte,
    "uuid": lambda s: bool(_UUID.match(s)),
    "uri": _is_uri,
}


def _canonical(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def _matches(x: Any, s: dict) -> bool:
    """Whether x satisfies a value-validation schema (an anyOf/oneOf/not branch)."""
    errs: Errors = []
    validate(x, s, "", errs, cel=False)
    return not errs


def _only_one_names(branches: list) -> list[str]:
    """["exact", "prefix"] for Istio's `oneOf: [{not: ...}, {required: [exact]}, ...]`."""
    names = []
    for b in branches:
        if set(b) == {"required"} and len(b["required"]) == 1:
            names.append(b["required"][0])
    return names


def validate(x: Any, s: dict, path: str, errs: Errors, cel: bool = True, root: bool = False) -> None:
    if x is None:
        if not s.get("nullable") and (s.get("type") or s.get("x-kubernetes-int-or-string")):
            errs.append((path, f'Invalid value: "null": must be of type {s.get("type") or "integer or string"}'))
        return
    if s.get("x-kubernetes-int-or-string"):
        if not (_is_int(x) or isinstance(x, str)):
            errs.append((path, f"Invalid value: {show(x)}: must be an integer or a string"))
            return
    elif (t := s.get("type")) and not _TYPE_OK.get(t, lambda v: True)(x):
        errs.append((path, f"Invalid value: {show(x)}: must be of type {t}"))
        return

    if "enum" in s and _canonical(x) not in {_canonical(e) for e in s["enum"]}:
        supported = ", ".join(json.dumps(e) for e in s["enum"])
        errs.append((path, f"Unsupported value: {show(x)}: supported values: {supported}"))

    if isinstance(x, str):
        n = len(x)  # code points, as Go's utf8.RuneCountInString
        if "maxLength" in s and n > s["maxLength"]:
            errs.append((path, f"Too long: may not be more than {s['maxLength']} characters"))
        if "minLength" in s and n < s["minLength"]:
            errs.append((path, f"Invalid value: {show(x)}: should be at least {s['minLength']} chars long"))
        if "pattern" in s and not _pattern(s["pattern"]).search(x):
            errs.append((path, f"Invalid value: {show(x)}: should match '{s['pattern']}'"))
        fmt = s.get("format")
        if fmt in FORMATS and not FORMATS[fmt](x):
            errs.append((path, f"Invalid value: {show(x)}: must be of format {fmt}"))

    if isinstance(x, (int, float)) and not isinstance(x, bool):
        if "minimum" in s:
            if s.get("exclusiveMinimum") and not x > s["minimum"]:
                errs.append((path, f"Invalid value: {show(x)}: should be greater than {s['minimum']}"))
            elif not x >= s["minimum"]:
                errs.append((path, f"Invalid value: {show(x)}: should be greater than or equal to {s['minimum']}"))
        if "maximum" in s:
            if s.get("exclusiveMaximum") and not x < s["maximum"]:
                errs.append((path, f"Invalid value: {show(x)}: should be less than {s['maximum']}"))
            elif not x <= s["maximum"]:
                errs.append((path, f"Invalid value: {show(x)}: should be less than or equal to {s['maximum']}"))
        if s.get("multipleOf") and (x / s["multipleOf"]) % 1:
            errs.append((path, f"Invalid value: {show(x)}: should be a multiple of {s['multipleOf']}"))

    if isinstance(x, list):
        if "maxItems" in s and len(x) > s["maxItems"]:
            errs.append((path, f"Too many: {len(x)}: must have at most {s['maxItems']} items"))
        if "minItems" in s and len(x) < s["minItems"]:
            errs.append((path, f"Invalid value: {len(x)}: should have at least {s['minItems']} items"))
        _list_type(x, s, path, errs)
        if isinstance(s.get("items"), dict):
            for i, v in enumerate(x):
                validate(v, s["items"], index(path, i), errs, cel)

    if isinstance(x, dict):
        fields = [k for k in x if not (root and k in ROOT_META)]
        if "maxProperties" in s and len(fields) > s["maxProperties"]:
            errs.append((path, f"Too many: {len(fields)}: must have at most {s['maxProperties']} items"))
        if "minProperties" in s and len(fields) < s["minProperties"]:
            errs.append((path, f"Invalid value: {len(fields)}: should have at least {s['minProperties']} properties"))
        for r in s.get("required") or []:
            if r not in x:
                errs.append((child(path, r), "Required value"))
        props = s.get("properties") or {}
        addl = s.get("additionalProperties")
        for k in fields:
            if k in props:
                validate(x[k], props[k], child(path, k), errs, cel)
            elif isinstance(addl, dict):
                validate(x[k], addl, key(path, k), errs, cel)

    for sub in s.get("allOf") or []:
        validate(x, sub, path, errs, cel=False)
    if s.get("anyOf") and not any(_matches(x, b) for b in s["anyOf"]):
        errs.append((path, f"Invalid value: {show(x)}: must validate at least one schema (anyOf)"))
    if s.get("oneOf"):
        n = sum(_matches(x, b) for b in s["oneOf"])
        if n != 1:
            names = _only_one_names(s["oneOf"])
            hint = ""
            if names and isinstance(x, dict):
                present = [f for f in names if f in x]
                hint = f": only one of {', '.join(names)} may be set (found: {', '.join(present) or 'none'})"
            errs.append((path, f"Invalid value: {show(x)}: must validate one and only one schema (oneOf), "
                               f"found {n} valid alternatives{hint}"))
    if isinstance(s.get("not"), dict) and _matches(x, s["not"]):
        errs.append((path, f"Invalid value: {show(x)}: must not validate the schema (not)"))

    if cel and s.get("x-kubernetes-validations"):
        run_rules(x, s, path, errs, root=root)


def _list_type(x: list, s: dict, path: str, errs: Errors) -> None:
    kind = s.get("x-kubernetes-list-type")
    if kind == "set":
        seen = set()
        for i, v in enumerate(x):
            c = _canonical(v)
            if c in seen:
                errs.append((index(path, i), f"Duplicate value: {show(v)}"))
            seen.add(c)
    elif kind == "map":
        keys = s.get("x-kubernetes-list-map-keys") or []
        seen = set()
        for i, v in enumerate(x):
            if not isinstance(v, dict):
                continue
            k = _canonical({name: v.get(name) for name in keys})
            if k in seen:
                errs.append((index(path, i), f"Duplicate value: {k}"))
            seen.add(k)


# --- 4. CEL ------------------------------------------------------------------------------------------

_CEL_RESERVED = frozenset({
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function",
    "if", "import", "let", "loop", "package", "namespace", "return", "var", "void", "while",
})
_ESCAPE = re.compile(r"__|[-./]|[^a-zA-Z0-9_]")


def escape_property(name: str) -> str | None:
    """Kubernetes' CEL property-name escaping (apiserver/pkg/cel/escaping.go); None when the
    name cannot be escaped, and so is not visible to rules."""
    if not name or name[0].isdigit():
        return None
    if name in _CEL_RESERVED:
        return f"__{name}__"
    escapes = {"__": "__underscores__", ".": "__dot__", "-": "__dash__", "/": "__slash__"}
    out = []
    pos = 0
    for m in _ESCAPE.finditer(name):
        if m.group(0) not in escapes:
            return None  # a character Kubernetes cannot escape
        out.append(name[pos:m.start()] + escapes[m.group(0)])
        pos = m.end()
    return "".join(out) + name[pos:]


def to_cel(x: Any, s: dict) -> Any:
    """A validated value as the CEL value a rule sees, typed by its schema."""
    if x is None:
        return None
    if s.get("x-kubernetes-int-or-string"):
        return ct.IntType(int(x)) if _is_int(x) else ct.StringType(x)
    t = s.get("type")
    if isinstance(x, dict):
        props = s.get("properties") or {}
        addl = s.get("additionalProperties")
        out = {}
        for k, v in x.items():
            if k in props:
                name = escape_property(k)
                if name is not None:
                    out[ct.StringType(name)] = to_cel(v, props[k])
            elif isinstance(addl, dict):
                out[ct.StringType(k)] = to_cel(v, addl)
            else:  # preserved unknown field: untyped data
                out[ct.StringType(k)] = cel_ext.to_cel_json(v)
        return ct.MapType(out)
    if isinstance(x, list):
        items = s.get("items") if isinstance(s.get("items"), dict) else {}
        return ct.ListType([to_cel(v, items) for v in x])
    if isinstance(x, bool):
        return ct.BoolType(x)
    if t == "integer" and _is_int(x):
        return ct.IntType(int(x))
    if t == "number" or isinstance(x, float):
        return ct.DoubleType(float(x))
    if isinstance(x, int):
        return ct.IntType(x)
    if isinstance(x, str):
        fmt = s.get("format")
        try:
            if fmt in ("date-time", "datetime"):
                return ct.TimestampType(x)
            if fmt == "duration":
                return cel_ext.Duration(cel_ext.parse_go_duration(x))
            if fmt == "byte":
                return ct.BytesType(base64.b64decode(x))
        except (ValueError, TypeError):
            pass  # the format check above reports it
        return ct.StringType(x)
    return cel_ext.to_cel_json(x)


_OLD_SELF = re.compile(r"\boldSelf\b")
_REASONS = {
    "FieldValueForbidden": "Forbidden",
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
}


def run_rules(x: Any, s: dict, path: str, errs: Errors, root: bool = False) -> None:
    value = None
    for rule in s["x-kubernetes-validations"]:
        expr = rule.get("rule", "")
        if _OLD_SELF.search(expr):
            if rule.get("optionalOldSelf"):
                errs.append((path, f"rule not supported by this validator (optionalOldSelf): {expr!r}"))
            # A transition rule compares with the stored object; on create there is none, and
            # the API server only evaluates it on update. Manifests are checked as a create.
            continue
        if value is None:
            value = to_cel(x, s)
            if root:  # the root also shows apiVersion, kind and metadata.name/generateName
                meta = x.get("metadata") or {}
                value[ct.StringType("apiVersion")] = ct.StringType(x.get("apiVersion", ""))
                value[ct.StringType("kind")] = ct.StringType(x.get("kind", ""))
                value[ct.StringType("metadata")] = ct.MapType({
                    ct.StringType(k): ct.StringType(meta[k]) for k in ("name", "generateName") if k in meta})
        where = path + rule.get("fieldPath", "") if rule.get("fieldPath") else path
        try:
            result = cel_ext.evaluate(expr, {"self": value})
        except cel_ext.CELError as e:
            errs.append((where, f"Invalid value: {show(x)}: rule {expr!r} could not be evaluated: {e}"))
            continue
        if not isinstance(result, ct.BoolType):
            errs.append((where, f"rule {expr!r} returned {type(result).__name__}, not a bool"))
            continue
        if result:
            continue
        message = rule.get("message") or f"failed rule: {expr}"
        if rule.get("messageExpression"):
            try:
                m = cel_ext.evaluate(rule["messageExpression"], {"self": value})
                if isinstance(m, str) and m.strip():
                    message = str(m)
            except cel_ext.CELError as e:
                message += f" (messageExpression failed: {e})"
        reason = _REASONS.get(rule.get("reason", ""))
        prefix = f"{reason}" if reason else f"Invalid value: {show(x)}"
        errs.append((where, f"{prefix}: {message} (rule: {' '.join(expr.split())})"))


def validate_custom_resource(obj: dict, schema: dict) -> tuple[list[tuple[str, str]], dict]:
    """Errors (path, message) for a custom resource, and the object as the API server would
    store it (pruned, defaulted). `obj` is not modified."""
    errs: Errors = []
    work = copy.deepcopy(obj)
    prune(work, schema, "", errs, root=True)
    apply_defaults(work, schema)
    validate(work, schema, "", errs, cel=True, root=True)
    return errs, work
