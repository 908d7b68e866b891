"""Kubernetes' CEL environment for `x-kubernetes-validations` rules, on top of cel-python.

The API server evaluates CRD validation rules with cel-go plus Kubernetes' own CEL libraries
(k8s.io/apiserver/pkg/cel/library) and cel-go's strings extension. cel-python implements the CEL
core: operators, the macros (`has`, `all`, `exists`, `exists_one`, `map`, `filter`), `size`,
`contains`, `startsWith`, `endsWith`, `matches` (RE2, unanchored, as in cel-go), `int()`,
`string()`, `timestamp()`... This module adds what the rules need and cel-python lacks, with the
semantics of the Go implementations:

- `duration(string)`: Go's `time.ParseDuration` (what cel-go calls), nanosecond precision, units
  ns us µs ms s m h (cel-python's own also takes `d` and rounds to microseconds).
- strings extension: charAt, indexOf, lastIndexOf, lowerAscii, upperAscii, replace, split,
  substring, trim, join, reverse.
- URL library: url, isURL (Go's `url.ParseRequestURI`), getScheme, getHost, getHostname,
  getPort, getEscapedPath, getQuery.
- regex library: find, findAll. lists library: isSorted, sum, indexOf, lastIndexOf.
- IP/CIDR libraries: ip, isIP, cidr, isCIDR, family, isUnspecified, isLoopback,
  isLinkLocalMulticast, isLinkLocalUnicast, isGlobalUnicast, containsIP, containsCIDR,
  prefixLength, masked, and `string()` of both.
- quantity library: quantity, isQuantity, sign, isInteger, asInteger, asApproximateFloat, add,
  sub, isGreaterThan, isLessThan, compareTo.

Not implemented: `format`, `strings.quote`, `ip.isCanonical`, `sets.*`, the authz library, list
`min()`/`max()` (cel-python parses `.min` as a macro), optional types. `compile()` refuses an
expression that calls any function it does not know, so a rule using one of these is reported as
an error naming the function: a rule is never skipped silently.

Unlike cel-go, cel-python does not type-check an expression against the schema before running
it; the API server did that when the CRD was created, so the vendored CRDs' rules are known to
type-check.
"""
from __future__ import annotations

import datetime
import functools
import ipaddress
import re
import urllib.parse
from fractions import Fraction
from typing import Any

import celpy
import celpy.celtypes as ct
import lark
import re2
from celpy.evaluation import CELEvalError, base_functions


class CELError(Exception):
    """A rule that does not compile, or whose evaluation failed (not: evaluated to false)."""


def _fail(message: str, exc: type = ValueError) -> CELEvalError:
    return CELEvalError(message, exc, (message,))


def _cel_function(fn):
    """Turn Python exceptions raised by an extension function into CEL errors, which cel-python
    then propagates with CEL's error semantics (absorbed by `false && err`, `true || err`)."""

    @functools.wraps(fn)
    def wrapper(*args):
        for a in args:
            if isinstance(a, CELEvalError):
                return a
        try:
            return fn(*args)
        except CELEvalError as e:
            return e
        except (TypeError, ValueError, IndexError, OverflowError, ZeroDivisionError) as e:
            return _fail(f"{fn.__name__.lstrip('_')}: {e}", type(e))

    return wrapper


def _need(value: Any, kind: type | tuple, fn: str) -> Any:
    if not isinstance(value, kind):
        raise TypeError(f"no such overload: {fn}({type(value).__name__})")
    return value


# --- duration ------------------------------------------------------------------------------

_NS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 MICRO SIGN
    "μs": 1_000,  # U+03BC GREEK SMALL LETTER MU
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_MAX_NS = 1 << 63


def parse_go_duration(text: str) -> int:
    """Go's `time.ParseDuration`, in nanoseconds. Raises ValueError with Go's message."""
    orig, s, neg = text, text, False
    if s and s[0] in "+-":
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if s == "":
        raise ValueError(f"time: invalid duration {orig!r}")
    total = 0
    while s:
        if not (s[0] == "." or s[0].isascii() and s[0].isdigit()):
            raise ValueError(f"time: invalid duration {orig!r}")
        m = re.match(r"[0-9]*", s)
        whole_digits, s = m.group(0), s[m.end():]
        pre = bool(whole_digits)
        v = int(whole_digits) if pre else 0
        if v >= _MAX_NS:
            raise ValueError(f"time: invalid duration {orig!r}")
        frac, scale, post = 0, 1.0, False
        if s.startswith("."):
            m = re.match(r"[0-9]*", s[1:])
            digits, s = m.group(0), s[1 + m.end():]
            post = bool(digits)
            # Go's leadingFraction stops accumulating once more digits would overflow.
            for d in digits:
                if frac > (_MAX_NS - 1) // 10:
                    break
                frac, scale = frac * 10 + int(d), scale * 10
        if not pre and not post:
            raise ValueError(f"time: invalid duration {orig!r}")
        m = re.match(r"[^0-9.]*", s)
        unit, s = m.group(0), s[m.end():]
        if not unit:
            raise ValueError(f"time: missing unit in duration {orig!r}")
        if unit not in _NS_PER_UNIT:
            raise ValueError(f"time: unknown unit {unit!r} in duration {orig!r}")
        mult = _NS_PER_UNIT[unit]
        if v > _MAX_NS // mult:
            raise ValueError(f"time: invalid duration {orig!r}")
        v *= mult
        if frac > 0:
            # Go computes the fractional part in float64, as here.
            v += int(float(frac) * (float(mult) / scale))
            if v > _MAX_NS:
                raise ValueError(f"time: invalid duration {orig!r}")
        total += v
        if total > _MAX_NS:
            raise ValueError(f"time: invalid duration {orig!r}")
    if neg:
        return -total
    if total > _MAX_NS - 1:
        raise ValueError(f"time: invalid duration {orig!r}")
    return total


class Duration(ct.DurationType):
    """A CEL duration that keeps nanoseconds (cel-python's is a timedelta: microseconds)."""

    def __new__(cls, nanos: int) -> "Duration":
        self = super().__new__(cls, datetime.timedelta(microseconds=int(nanos / 1000)))
        self.nanos = nanos
        return self

    @staticmethod
    def _ns(other: Any):
        if isinstance(other, Duration):
            return other.nanos
        if isinstance(other, datetime.timedelta):
            return (other // datetime.timedelta(microseconds=1)) * 1000
        return None

    def _cmp(self, other, op):
        o = self._ns(other)
        if o is None:
            raise TypeError(f"no such overload: duration compared with {type(other).__name__}")
        return op(self.nanos, o)

    def __eq__(self, other):
        o = self._ns(other)
        return o is not None and self.nanos == o

    def __ne__(self, other):
        return not self.__eq__(other)

    def __lt__(self, other):
        return self._cmp(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._cmp(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._cmp(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._cmp(other, lambda a, b: a >= b)

    def __hash__(self):
        return hash(self.nanos)

    def __add__(self, other):
        o = self._ns(other)
        if o is None:
            return NotImplemented
        return Duration(self.nanos + o)

    def __sub__(self, other):
        o = self._ns(other)
        if o is None:
            return NotImplemented
        return Duration(self.nanos - o)

    def __neg__(self):
        return Duration(-self.nanos)

    def __repr__(self):
        return f"Duration({self.nanos}ns)"

    def __str__(self):
        # CEL's string(duration): seconds with up to 9 fractional digits, e.g. "1.5s".
        sign, n = ("-" if self.nanos < 0 else ""), abs(self.nanos)
        secs, frac = divmod(n, 1_000_000_000)
        return f"{sign}{secs}.{frac:09d}".rstrip("0").rstrip(".") + "s" if frac else f"{sign}{secs}s"


@_cel_function
def _duration(value):
    if isinstance(value, Duration):
        return value
    if isinstance(value, ct.DurationType):
        return Duration(Duration._ns(value))
    _need(value, str, "duration")
    return Duration(parse_go_duration(str(value)))


# --- strings extension (cel-go ext.Strings) -------------------------------------------------


def _s(value, fn):
    return str(_need(value, str, fn))


def _i(value, fn):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"no such overload: {fn} index of type {type(value).__name__}")
    return int(value)


@_cel_function
def _charAt(s, i):
    s, i = _s(s, "charAt"), _i(i, "charAt")
    if i < 0 or i > len(s):
        raise IndexError(f"index out of range: {i}")
    return ct.StringType(s[i:i + 1])


@_cel_function
def _indexOf(target, sub, *offset):
    if isinstance(target, list):
        _need(target, list, "indexOf")
        for n, item in enumerate(target):
            if _equal(item, sub):
                return ct.IntType(n)
        return ct.IntType(-1)
    s, sub = _s(target, "indexOf"), _s(sub, "indexOf")
    off = _i(offset[0], "indexOf") if offset else 0
    if sub == "":
        return ct.IntType(off)
    if off < 0 or (offset and off >= len(s)):
        raise IndexError(f"index out of range: {off}")
    return ct.IntType(s.find(sub, off))


@_cel_function
def _lastIndexOf(target, sub, *offset):
    if isinstance(target, list):
        for n in range(len(target) - 1, -1, -1):
            if _equal(target[n], sub):
                return ct.IntType(n)
        return ct.IntType(-1)
    s, sub = _s(target, "lastIndexOf"), _s(sub, "lastIndexOf")
    if not offset:
        return ct.IntType(len(s) if sub == "" else s.rfind(sub))
    off = _i(offset[0], "lastIndexOf")
    if sub == "":
        return ct.IntType(off)
    if off < 0 or off >= len(s):
        raise IndexError(f"index out of range: {off}")
    if off + len(sub) > len(s):
        off = len(s) - len(sub)
    return ct.IntType(s.rfind(sub, 0, off + len(sub)))


def _ascii_case(s: str, upper: bool) -> str:
    if upper:
        return "".join(chr(ord(c) - 32) if "a" <= c <= "z" else c for c in s)
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)


@_cel_function
def _lowerAscii(s):
    return ct.StringType(_ascii_case(_s(s, "lowerAscii"), upper=False))


@_cel_function
def _upperAscii(s):
    return ct.StringType(_ascii_case(_s(s, "upperAscii"), upper=True))


@_cel_function
def _replace(s, old, new, *n):
    count = _i(n[0], "replace") if n else -1
    return ct.StringType(_s(s, "replace").replace(_s(old, "replace"), _s(new, "replace"), count))


@_cel_function
def _split(s, sep, *n):
    """Go's strings.SplitN: n < 0 all parts, n == 0 none, n > 0 at most n parts."""
    s, sep = _s(s, "split"), _s(sep, "split")
    limit = _i(n[0], "split") if n else -1
    if limit == 0:
        return ct.ListType([])
    if sep == "":
        parts = list(s)
        if 0 < limit < len(parts):
            parts = parts[:limit - 1] + ["".join(parts[limit - 1:])]
    else:
        parts = s.split(sep, limit - 1) if limit > 0 else s.split(sep)
    return ct.ListType([ct.StringType(p) for p in parts])


@_cel_function
def _substring(s, start, *end):
    s, start = _s(s, "substring"), _i(start, "substring")
    stop = _i(end[0], "substring") if end else len(s)
    if start < 0 or start > len(s):
        raise IndexError(f"index out of range: {start}")
    if stop < 0 or stop > len(s):
        raise IndexError(f"index out of range: {stop}")
    if start > stop:
        raise IndexError(f"invalid substring range. start: {start}, end: {stop}")
    return ct.StringType(s[start:stop])


@_cel_function
def _trim(s):
    return ct.StringType(_s(s, "trim").strip())


@_cel_function
def _join(items, *sep):
    _need(items, list, "join")
    return ct.StringType((_s(sep[0], "join") if sep else "").join(_s(i, "join") for i in items))


@_cel_function
def _reverse(s):
    return ct.StringType(_s(s, "reverse")[::-1])


# --- regex library --------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _re2(pattern: str):
    return re2.compile(pattern)


@_cel_function
def _find(s, pattern):
    m = _re2(_s(pattern, "find")).search(_s(s, "find"))
    return ct.StringType(m.group(0) if m else "")


@_cel_function
def _findAll(s, pattern, *n):
    limit = _i(n[0], "findAll") if n else -1
    found = [m.group(0) for m in _re2(_s(pattern, "findAll")).finditer(_s(s, "findAll"))]
    if limit >= 0:
        found = found[:limit]
    return ct.ListType([ct.StringType(f) for f in found])


# --- lists library ----------------------------------------------------------------------------


def _equal(a, b) -> bool:
    try:
        return bool(a == b)
    except TypeError:
        return False


@_cel_function
def _isSorted(items):
    _need(items, list, "isSorted")
    return ct.BoolType(all(not (items[i + 1] < items[i]) for i in range(len(items) - 1)))


@_cel_function
def _sum(items):
    _need(items, list, "sum")
    if not items:
        return ct.IntType(0)
    total = items[0]
    for item in items[1:]:
        total = total + item
    return total


# --- URL library (Go's net/url, as k8s.io/apiserver/pkg/cel/library/urls.go uses it) ---------

_HOST_OK = set("!$&'()*+,;=:[]<>\"")
_USERINFO_OK = set("-._:~!$&'()*+,;=%@")


def _is_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _unescape_check(s: str, host: bool) -> None:
    """The checks of Go's url.unescape in encodeHost/encodePath mode (it only validates here)."""
    i = 0
    while i < len(s):
        c = s[i]
        if c == "%":
            if i + 2 >= len(s) or not all(x in "0123456789abcdefABCDEF" for x in s[i + 1:i + 3]):
                raise ValueError(f"invalid URL escape {s[i:i + 3]!r}")
            if host and int(s[i + 1], 16) < 8 and s[i:i + 3] != "%25":
                raise ValueError(f"invalid URL escape {s[i:i + 3]!r}")
            i += 3
            continue
        if host and ord(c) < 0x80 and not (_is_alnum(c) or c in _HOST_OK or c in "-_.~"):
            raise ValueError(f"invalid character {c!r} in host name")
        i += 1


def _valid_optional_port(port: str) -> bool:
    return port == "" or (port[0] == ":" and all(c in "0123456789" for c in port[1:]))


def _parse_host(host: str) -> str:
    if host.startswith("["):
        i = host.rfind("]")
        if i < 0:
            raise ValueError("missing ']' in host")
        if not _valid_optional_port(host[i + 1:]):
            raise ValueError(f"invalid port {host[i + 1:]!r} after host")
        zone = host[:i].find("%25")
        if zone >= 0:
            _unescape_check(host[:zone], host=True)
            _unescape_check(host[i:], host=True)
            return host
    elif (i := host.rfind(":")) != -1 and not _valid_optional_port(host[i:]):
        raise ValueError(f"invalid port {host[i:]!r} after host")
    _unescape_check(host, host=True)
    return urllib.parse.unquote(host)


class URL:
    """What Go's url.ParseRequestURI returns, for the URL library's getters."""

    def __init__(self, raw: str):
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
            raise ValueError("net/url: invalid control character in URL")
        if raw == "":
            raise ValueError("empty url")
        self.raw, self.scheme, self.opaque, self.host = raw, "", "", ""
        self.path, self.raw_query, self.has_authority = "", "", False
        if raw == "*":
            self.path = "*"
            return
        rest = raw
        for i, c in enumerate(raw):
            if c.isascii() and c.isalpha():
                continue
            if c.isascii() and (c.isdigit() or c in "+-."):
                if i == 0:
                    break
                continue
            if c == ":":
                if i == 0:
                    raise ValueError("missing protocol scheme")
                self.scheme, rest = raw[:i].lower(), raw[i + 1:]
            break
        if rest.endswith("?") and rest.count("?") == 1:
            rest = rest[:-1]
        else:
            rest, _, self.raw_query = rest.partition("?")
        if not rest.startswith("/"):
            if self.scheme:
                self.opaque = rest  # rootless paths are opaque (RFC 3986)
                return
            raise ValueError("invalid URI for request")
        if self.scheme and rest.startswith("//"):
            authority, rest = rest[2:], ""
            if (i := authority.find("/")) >= 0:
                authority, rest = authority[:i], authority[i:]
            at = authority.rfind("@")
            self.host = _parse_host(authority[at + 1:] if at >= 0 else authority)
            if at >= 0 and not all(_is_alnum(c) or c in _USERINFO_OK for c in authority[:at]):
                raise ValueError("net/url: invalid userinfo")
            self.raw_host = authority[at + 1:] if at >= 0 else authority
            self.has_authority = True
        _unescape_check(rest, host=False)
        self.raw_path = rest
        self.path = urllib.parse.unquote(rest)

    def hostname(self) -> str:
        host = self.host
        if host.startswith("["):
            return host[1:host.find("]")] if "]" in host else host[1:]
        i = host.rfind(":")
        return host[:i] if i >= 0 else host

    def port(self) -> str:
        host = self.host
        i = host.rfind(":")
        if i < 0 or "]" in host[i:]:
            return ""
        return host[i + 1:]

    def escaped_path(self) -> str:
        raw = getattr(self, "raw_path", "")
        ok = set("!$&'()*+,;=:@[]%/-_.~")
        if raw and all(_is_alnum(c) or c in ok for c in raw) and urllib.parse.unquote(raw) == self.path:
            return raw
        return urllib.parse.quote(self.path, safe="/!$&'()*+,;=:@-_.~")

    def __eq__(self, other):
        return isinstance(other, URL) and self.raw == other.raw

    def __hash__(self):
        return hash(self.raw)

    def __str__(self):
        return self.raw


def _parses(parse, s, name: str) -> ct.BoolType:
    """The `isX(string)` functions: whether `parse` accepts the string (a non-string is still a
    type error, as in Kubernetes)."""
    try:
        parse(_s(s, name))
        return ct.BoolType(True)
    except ValueError:
        return ct.BoolType(False)


@_cel_function
def _url(s):
    try:
        return URL(_s(s, "url"))
    except ValueError as e:
        raise ValueError(f"URL parse error during conversion from string: {e}") from None


@_cel_function
def _isURL(s):
    return _parses(URL, s, "isURL")


@_cel_function
def _getScheme(u):
    return ct.StringType(_need(u, URL, "getScheme").scheme)


@_cel_function
def _getHost(u):
    return ct.StringType(_need(u, URL, "getHost").host)


@_cel_function
def _getHostname(u):
    return ct.StringType(_need(u, URL, "getHostname").hostname())


@_cel_function
def _getPort(u):
    return ct.StringType(_need(u, URL, "getPort").port())


@_cel_function
def _getEscapedPath(u):
    return ct.StringType(_need(u, URL, "getEscapedPath").escaped_path())


@_cel_function
def _getQuery(u):
    q = urllib.parse.parse_qs(_need(u, URL, "getQuery").raw_query, keep_blank_values=True)
    return ct.MapType({ct.StringType(k): ct.ListType([ct.StringType(x) for x in v]) for k, v in q.items()})


# --- IP and CIDR libraries (netip semantics, as k8s' ip.go/cidr.go) ----------------------------


class IP:
    def __init__(self, addr):
        self.addr = addr

    def __eq__(self, other):
        return isinstance(other, IP) and self.addr == other.addr

    def __hash__(self):
        return hash(self.addr)

    def __str__(self):
        return str(self.addr)


class CIDR:
    def __init__(self, addr, bits: int):
        self.addr, self.bits = addr, bits
        self.network = ipaddress.ip_network(f"{addr}/{bits}", strict=False)

    def __eq__(self, other):
        return isinstance(other, CIDR) and (self.addr, self.bits) == (other.addr, other.bits)

    def __hash__(self):
        return hash((self.addr, self.bits))

    def __str__(self):
        return f"{self.addr}/{self.bits}"


def _parse_addr(s: str):
    if "%" in s:
        raise ValueError(f"IP address with zone value is not allowed: {s}")
    addr = ipaddress.ip_address(s)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        raise ValueError(f"IPv4-mapped IPv6 address is not allowed: {s}")
    return addr


def _parse_cidr(s: str) -> CIDR:
    addr_s, slash, bits_s = s.partition("/")
    if not slash:
        raise ValueError(f"network address parse error during conversion from string: no '/' in {s!r}")
    addr = _parse_addr(addr_s)
    if not bits_s.isdigit() or (len(bits_s) > 1 and bits_s[0] == "0"):
        raise ValueError(f"bad bits after slash: {bits_s!r}")
    bits = int(bits_s)
    if bits > addr.max_prefixlen:
        raise ValueError(f"prefix length {bits} too large for IPv{addr.version}")
    return CIDR(addr, bits)


@_cel_function
def _ip(value):
    if isinstance(value, CIDR):
        return IP(value.addr)
    return IP(_parse_addr(_s(value, "ip")))


@_cel_function
def _isIP(s):
    return _parses(_parse_addr, s, "isIP")


@_cel_function
def _cidr(s):
    return _parse_cidr(_s(s, "cidr"))


@_cel_function
def _isCIDR(s):
    return _parses(_parse_cidr, s, "isCIDR")


def _ip_pred(name, pred):
    @_cel_function
    def fn(ip):
        return ct.BoolType(pred(_need(ip, IP, name).addr))

    fn.__name__ = name
    return fn


def _is_global_unicast(a) -> bool:
    # Go's netip.Addr.IsGlobalUnicast: private ranges count as global unicast.
    if a.version == 4 and a in (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("255.255.255.255")):
        return False
    return not (a.is_unspecified or a.is_loopback or a.is_multicast or a.is_link_local)


def _is_link_local_multicast(a) -> bool:
    if a.version == 4:
        return a in ipaddress.ip_network("224.0.0.0/24")
    return a in ipaddress.ip_network("ff02::/16")


@_cel_function
def _family(value):
    return ct.IntType(_need(value, IP, "family").addr.version)


@_cel_function
def _containsIP(c, other):
    c = _need(c, CIDR, "containsIP")
    addr = other.addr if isinstance(other, IP) else _parse_addr(_s(other, "containsIP"))
    return ct.BoolType(addr.version == c.addr.version and addr in c.network)


@_cel_function
def _containsCIDR(c, other):
    c = _need(c, CIDR, "containsCIDR")
    o = other if isinstance(other, CIDR) else _parse_cidr(_s(other, "containsCIDR"))
    return ct.BoolType(o.addr.version == c.addr.version and o.addr in c.network and c.bits <= o.bits)


@_cel_function
def _prefixLength(c):
    return ct.IntType(_need(c, CIDR, "prefixLength").bits)


@_cel_function
def _masked(c):
    c = _need(c, CIDR, "masked")
    return CIDR(c.network.network_address, c.bits)


# --- quantity library (resource.Quantity) -----------------------------------------------------

_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE])?$"
)
_SUFFIX = {
    "": Fraction(1), "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18), "Ki": Fraction(2**10), "Mi": Fraction(2**20),
    "Gi": Fraction(2**30), "Ti": Fraction(2**40), "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}


def parse_quantity(s: str) -> Fraction:
    """A Kubernetes resource.Quantity's exact value; ValueError if the string is not one."""
    m = _QUANTITY.match(s)
    if not m:
        raise ValueError(f"quantities must match the regular expression "
                         f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {s!r}")
    number, suffix = Fraction(m.group(1)), m.group(2) or ""
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return number * Fraction(10) ** int(suffix[1:])
    return number * _SUFFIX[suffix]


class Quantity:
    def __init__(self, value: Fraction, text: str):
        self.value, self.text = value, text

    def __eq__(self, other):
        return isinstance(other, Quantity) and self.value == other.value

    def __hash__(self):
        return hash(self.value)

    def __str__(self):
        return self.text


def _q(value, fn) -> Fraction:
    if isinstance(value, Quantity):
        return value.value
    if isinstance(value, int) and not isinstance(value, bool):
        return Fraction(int(value))
    raise TypeError(f"no such overload: {fn}({type(value).__name__})")


@_cel_function
def _quantity(s):
    text = _s(s, "quantity")
    return Quantity(parse_quantity(text), text)


@_cel_function
def _isQuantity(s):
    return _parses(parse_quantity, s, "isQuantity")


@_cel_function
def _sign(q):
    v = _q(q, "sign")
    return ct.IntType((v > 0) - (v < 0))


@_cel_function
def _isInteger(q):
    v = _q(q, "isInteger")
    return ct.BoolType(v.denominator == 1 and -(1 << 63) <= v < (1 << 63))


@_cel_function
def _asInteger(q):
    v = _q(q, "asInteger")
    if v.denominator != 1 or not -(1 << 63) <= v < (1 << 63):
        raise ValueError("cannot convert value to integer")
    return ct.IntType(int(v))


@_cel_function
def _asApproximateFloat(q):
    return ct.DoubleType(float(_q(q, "asApproximateFloat")))


@_cel_function
def _add(q, other):
    v = _q(q, "add") + _q(other, "add")
    return Quantity(v, str(v))


@_cel_function
def _sub(q, other):
    v = _q(q, "sub") - _q(other, "sub")
    return Quantity(v, str(v))


@_cel_function
def _isGreaterThan(q, other):
    return ct.BoolType(_q(q, "isGreaterThan") > _q(other, "isGreaterThan"))


@_cel_function
def _isLessThan(q, other):
    return ct.BoolType(_q(q, "isLessThan") < _q(other, "isLessThan"))


@_cel_function
def _compareTo(q, other):
    a, b = _q(q, "compareTo"), _q(other, "compareTo")
    return ct.IntType((a > b) - (a < b))


# --- the environment ----------------------------------------------------------------------------

FUNCTIONS: dict[str, Any] = {
    "duration": _duration,
    # strings extension
    "charAt": _charAt, "indexOf": _indexOf, "lastIndexOf": _lastIndexOf,
    "lowerAscii": _lowerAscii, "upperAscii": _upperAscii, "replace": _replace, "split": _split,
    "substring": _substring, "trim": _trim, "join": _join, "reverse": _reverse,
    # regex, lists
    "find": _find, "findAll": _findAll, "isSorted": _isSorted, "sum": _sum,
    # URLs
    "url": _url, "isURL": _isURL, "getScheme": _getScheme, "getHost": _getHost,
    "getHostname": _getHostname, "getPort": _getPort, "getEscapedPath": _getEscapedPath,
    "getQuery": _getQuery,
    # IP / CIDR
    "ip": _ip, "isIP": _isIP, "cidr": _cidr, "isCIDR": _isCIDR, "family": _family,
    "isUnspecified": _ip_pred("isUnspecified", lambda a: a.is_unspecified),
    "isLoopback": _ip_pred("isLoopback", lambda a: a.is_loopback),
    "isLinkLocalMulticast": _ip_pred("isLinkLocalMulticast", _is_link_local_multicast),
    "isLinkLocalUnicast": _ip_pred("isLinkLocalUnicast", lambda a: a.is_link_local),
    "isGlobalUnicast": _ip_pred("isGlobalUnicast", _is_global_unicast),
    "containsIP": _containsIP, "containsCIDR": _containsCIDR, "prefixLength": _prefixLength,
    "masked": _masked,
    # quantity
    "quantity": _quantity, "isQuantity": _isQuantity, "sign": _sign, "isInteger": _isInteger,
    "asInteger": _asInteger, "asApproximateFloat": _asApproximateFloat, "add": _add, "sub": _sub,
    "isGreaterThan": _isGreaterThan, "isLessThan": _isLessThan, "compareTo": _compareTo,
}

# Macros cel-python expands itself, and the core functions it implements.
MACROS = frozenset({"has", "all", "exists", "exists_one", "map", "filter"})
KNOWN_FUNCTIONS = frozenset(
    MACROS | set(FUNCTIONS) | {k for k in base_functions if k[:1].isalpha()} | {"dyn"}
)

_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def called_functions(tree: lark.Tree) -> set[str]:
    """Names of the functions and methods an expression calls (macros included)."""
    names = set()
    for node in tree.iter_subtrees():
        if node.data in ("member_dot_arg", "ident_arg", "dot_ident_arg"):
            for child in node.children:
                if isinstance(child, lark.Token) and child.type == "IDENT":
                    names.add(str(child))
                    break
    return names


def compile_rule(expr: str):
    """A cel-python program for `expr`, cached. Raises CELError when it does not parse or calls
    a function this environment lacks (cel-python would only notice while evaluating)."""
    program = _PROGRAMS.get(expr)
    if program is None:
        try:
            tree = _ENV.compile(expr)
        except Exception as e:  # noqa: BLE001 - any parser failure is a compile error
            program = CELError(f"does not compile: {str(e).strip()}")
        else:
            unknown = sorted(called_functions(tree) - KNOWN_FUNCTIONS)
            if unknown:
                program = CELError(f"does not compile: undeclared reference to function(s) "
                                   f"{', '.join(unknown)} (not implemented by testenv/k8s/cel_ext.py)")
            else:
                program = _ENV.program(tree, functions=FUNCTIONS)
        _PROGRAMS[expr] = program
    if isinstance(program, CELError):
        raise program
    return program


def evaluate(expr: str, activation: dict[str, Any]) -> Any:
    """Evaluate `expr` with `activation` (CEL values); CELError if it cannot be compiled or
    evaluated. The result is a CEL value (a rule must yield a BoolType)."""
    program = compile_rule(expr)
    try:
        result = program.evaluate(activation)
    except CELEvalError as e:
        raise CELError(_describe(e)) from None
    except Exception as e:  # noqa: BLE001 - an interpreter failure is an evaluation error
        raise CELError(f"{type(e).__name__}: {e}") from None
    if isinstance(result, CELEvalError):
        raise CELError(_describe(result))
    return result


def _describe(err: CELEvalError) -> str:
    args = err.args
    if len(args) >= 3 and args[2]:
        inner = args[2][0] if isinstance(args[2], tuple) and args[2] else args[2]
        if str(inner) and str(inner) != str(args[0]):
            return f"{args[0]}: {inner}" if "overflow" not in str(args[0]) else str(inner)
    return str(args[0]) if args else repr(err)


def to_cel_json(value: Any) -> Any:
    """A plain JSON value as a CEL value (for data without a schema, e.g. preserved fields)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ct.BoolType(value)
    if isinstance(value, int):
        return ct.IntType(value)
    if isinstance(value, float):
        return ct.DoubleType(value)
    if isinstance(value, str):
        return ct.StringType(value)
    if isinstance(value, list):
        return ct.ListType([to_cel_json(v) for v in value])
    if isinstance(value, dict):
        return ct.MapType({ct.StringType(k): to_cel_json(v) for k, v in value.items()})
    raise TypeError(f"not a JSON value: {value!r}")
