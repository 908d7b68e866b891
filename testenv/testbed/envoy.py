"""A real Envoy configured like an Istio ingress gateway, with the wsgate filter before the router.

The bootstrap mirrors what istiod generates for a `Gateway` with `tls.httpsRedirect: true` on the
plaintext port and TLS termination on the secure port (compare `istioctl proxy-config listener
<gateway-pod> -o json` and `... route ... -o json`):
- the plaintext port's virtual host has `require_tls: ALL` (Istio's `httpsRedirect`), so Envoy
  answers every plaintext request with a 301 before any route matches;
- `use_remote_address: true` (gateways are the edge: Envoy sets `x-forwarded-proto` itself);
- `upgrade_configs` for `websocket` (Istio's default), `CONNECT`, and `spdy/3.1` (what the
  `EnvoyFilter` in `istio/` adds for kubectl's fallback);
- `http2_protocol_options.allow_connect: true` for RFC 8441 WebSockets over HTTP/2;
- path normalisation on (Istio's default `BASE`);
- the Wasm filter (`envoy.filters.http.wasm`, V8, `FAIL_RELOAD` as the manifests ship) before
  `envoy.filters.http.router`, which is where a `WasmPlugin` with `phase: AUTHN` lands;
- routes that match the routing header `x-wsgate-cluster` first, as a `VirtualService` with a
  header match does.

Ports are 0 (the kernel picks) and read back from the admin API; the TLS port can be chosen
with `free_port()` when the filter config has to name it.

Lifecycle, for the resumption tests: `kill()` (SIGKILL) and `restart()` (a new process on the
same listener ports), `drain_listeners()` (what istio-agent does on termination) and, for
dynamic gateways, `roll_listeners()` (a listener replaced by a push, which is what closes live
WebSockets on a running Envoy); `replica_ports` and `session_header` put several sidecars
behind Envoy's stateful session filter, as Istio's `persistent-session-header` label does.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .certs import Tls
from .procfs import open_fds, status_kib
from .sshd import free_port

ROOT = Path(__file__).resolve().parents[2]
ENVOY = Path(os.environ.get("WSGATE_ENVOY", ROOT / ".venv" / "bin" / "envoy"))
WASM = Path(os.environ.get("WSGATE_WASM", ROOT / "target" / "wsgate-filter.wasm"))


def wasm_filter(plugin_config: str, module: Path | None = None, vm_id: str = "wsgate",
                failure_policy: str = "FAIL_RELOAD") -> dict:
    """The Wasm HTTP filter running `module` (the benchmarks also load a no-op module), with
    Envoy's `failure_policy` for a VM that fails (the failure-policy tests choose it)."""
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "wsgate",
                "root_id": vm_id,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin_config,
                },
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "vm_id": vm_id,
                    "code": {"local": {"filename": str(module or WASM)}},
                },
                "failure_policy": failure_policy,
            },
        },
    }


# Envoy's stateful session filter in header mode (`envoy.http.stateful_session.header`), as
# istiod builds it for a Service labelled `istio.io/persistent-session-header: <header>`: an
# empty filter in the connection manager (Istio's EmptySessionFilter) and the header on each
# route to the Service (StatefulSessionPerRoute), not `strict`. The response names the chosen
# endpoint (base64 of `ip:port`) in the header; a request carrying it goes back to that endpoint;
# an unknown or forged value falls back to load balancing.
STATEFUL_SESSION_FILTER = {
    "name": "envoy.filters.http.stateful_session",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
    },
}


def stateful_session_per_route(header: str) -> dict:
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute",
        "stateful_session": {
            "session_state": {
                "name": "envoy.http.stateful_session.header",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState",
                    "name": header,
                },
            },
        },
    }


def _routes(require_tls: bool, session_header: str | None = None) -> dict:
    def route(match: dict, tag: str) -> dict:
        out = {
            "match": match,
            # timeout 0: no per-request deadline on long-lived upgrades (Istio's default for a route
            # without `timeout`).
            "route": {"cluster": "backend", "timeout": "0s"},
            "request_headers_to_add": [{"header": {"key": "x-testbed-route", "value": tag}}],
        }
        if session_header is not None:
            out["typed_per_filter_config"] = {
                "envoy.filters.http.stateful_session": stateful_session_per_route(session_header)}
        return out

    vhost = {
        "name": "gateway",
        "domains": ["*"],
        "routes": [
            route(
                {"prefix": "/", "headers": [{"name": "x-wsgate-cluster", "present_match": True}]},
                "cluster-route",
            ),
            route({"prefix": "/"}, "default"),
        ],
    }
    if require_tls:
        vhost["require_tls"] = "ALL"
    return {"name": "gateway", "virtual_hosts": [vhost]}


def _listener(name: str, filters: list[dict], tls: Tls | None, port: int = 0, require_tls: bool = True,
              access_log: bool = True, session_header: str | None = None) -> dict:
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "codec_type": "AUTO",
            "use_remote_address": True,
            "normalize_path": True,
            "upgrade_configs": [
                {"upgrade_type": "websocket"},
                {"upgrade_type": "CONNECT"},
                {"upgrade_type": "spdy/3.1"},
            ],
            "http2_protocol_options": {"allow_connect": True},
            "access_log": [
                {
                    "name": "envoy.access_loggers.stderr",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"
                    },
                }
            ] if access_log else [],
            "http_filters": [
                *filters,
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                },
            ],
            "route_config": _routes(require_tls=require_tls and tls is None, session_header=session_header),
        },
    }
    listener = {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [hcm]}],
    }
    if tls is not None:
        listener["filter_chains"][0]["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": str(tls.cert_pem)},
                            "private_key": {"filename": str(tls.key_pem)},
                        }
                    ],
                },
            },
        }
    return listener


def listeners(plugin_config: str, tls: Tls, tls_port: int = 0, plaintext_port: int = 0,
              http_filters: list[dict] | None = None, require_tls: bool = True, quiet: bool = False,
              session_header: str | None = None) -> list[dict]:
    """`http_filters` replaces the wsgate filter (the benchmarks compare none and Lua);
    `require_tls=False` drops the plaintext port's 301 so plain requests reach the backend;
    `quiet` drops the access log (benchmarks); `session_header`: the stateful session filter
    after the others (after a `WasmPlugin` in the AUTHN phase), with that header on every route."""
    filters = [wasm_filter(plugin_config)] if http_filters is None else list(http_filters)
    if session_header is not None:
        filters.append(STATEFUL_SESSION_FILTER)
    return [
        _listener("plaintext", filters, None, plaintext_port, require_tls=require_tls, access_log=not quiet,
                  session_header=session_header),
        _listener("tls", filters, tls, tls_port, access_log=not quiet, session_header=session_header),
    ]


def istio_stats_config(extra_stat_tags: list[str]) -> dict:
    """The `stats_config` istio-agent writes into every proxy's bootstrap (Istio's
    `tools/packaging/common/envoy_bootstrap.json`, with the inclusion list of
    `pkg/bootstrap/config.go`): no Envoy default tag extractors, Istio's own tag regexes, one
    regex per `extraStatTags` entry (ProxyConfig `extraStatTags`, annotation
    `sidecar.istio.io/extraStatTags`), and a stats matcher that keeps only the listed prefixes
    (`wasm` among the required ones, so every `wasmcustom.*` stat is kept)."""
    tags = [
        {"tag_name": "cluster_name", "regex": r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"},
        {"tag_name": "tcp_prefix", "regex": r"^tcp\.((.*?)\.)\w+?$"},
        {"tag_name": "response_code", "regex": r"_rq(_(\d{3}))$"},
        {"tag_name": "response_code_class", "regex": r"_rq(_(\dxx))$"},
        {"tag_name": "http_conn_manager_listener_prefix",
         "regex": r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
        {"tag_name": "http_conn_manager_prefix",
         "regex": r"^http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
        {"tag_name": "listener_address",
         "regex": r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
        {"tag_name": "mongo_prefix", "regex": r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"},
        *({"tag_name": t, "regex": rf"({t}=\.=(.*?);\.;)"} for t in extra_stat_tags),
        {"tag_name": "cache", "regex": r"(cache\.(.+?)\.)"},
        {"tag_name": "component", "regex": r"(component\.(.+?)\.)"},
        {"tag_name": "tag", "regex": r"(tag\.(.+?);\.)"},
        {"tag_name": "wasm_filter", "regex": r"(wasm_filter\.(.+?)\.)"},
        {"tag_name": "authz_enforce_result", "regex": r"rbac(\.(allowed|denied))"},
        {"tag_name": "authz_dry_run_action", "regex": r"(\.istio_dry_run_(allow|deny)_)"},
        {"tag_name": "authz_dry_run_result", "regex": r"(\.shadow_(allowed|denied))"},
    ]
    prefixes = ["reporter=", "cluster_manager", "listener_manager", "server", "cluster.xds-grpc", "wasm",
                "component", "istio"]
    suffixes = ["rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied"]
    return {
        "use_all_default_tags": False,
        "stats_tags": tags,
        "stats_matcher": {
            "inclusion_list": {
                "patterns": [
                    *({"prefix": p} for p in prefixes),
                    *({"suffix": s} for s in suffixes),
                    {"safe_regex": {"regex": r"vhost\..*\.route\..*"}},
                ]
            }
        },
    }


def bootstrap(backend_port: int, static_listeners: list[dict] | None, listeners_file: Path | None = None,
              stats_config: dict | None = None, replica_ports: tuple[int, ...] = ()) -> dict:
    """Listeners either in the bootstrap or, with `listeners_file`, from a file Envoy watches
    (LDS from a path: what the reload tests use, as istiod's pushes would be). `stats_config`:
    Envoy's defaults when None (e.g. `istio_stats_config(...)` for what Istio writes).
    `replica_ports`: more endpoints of the backend cluster after `backend_port` (replicas of one
    Service), balanced round robin; an endpoint named by a stateful session is used whatever its
    health (`override_host_status`, what istiod sets for a Service with a session header)."""
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        for port in (backend_port, *replica_ports)
    ]
    out = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": static_listeners or [],
            "clusters": [
                {
                    "name": "backend",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "common_lb_config": {"override_host_status": {
                        "statuses": ["HEALTHY", "DRAINING", "UNKNOWN", "DEGRADED"]}},
                    "load_assignment": {
                        "cluster_name": "backend",
                        "endpoints": [{"lb_endpoints": endpoints}],
                    },
                }
            ],
        },
    }
    if stats_config is not None:
        out["stats_config"] = stats_config
    if listeners_file is not None:
        out["node"] = {"id": "wsgate-testbed", "cluster": "wsgate-testbed"}  # xDS requires both
        out["dynamic_resources"] = {
            "lds_config": {"path_config_source": {"path": str(listeners_file)}, "resource_api_version": "V3"},
        }
    return out


class EnvoyExited(RuntimeError):
    """Envoy stopped before it was ready (e.g. the filter refused its configuration)."""

    def __init__(self, code: int, log: str) -> None:
        super().__init__(f"envoy exited with {code} before it was ready")
        self.code = code
        self.log = log


@dataclass
class Gateway:
    """One running Envoy. Use as a context manager; `log()` returns everything it printed."""

    workdir: Path
    plugin_config: str
    backend_port: int
    tls: Tls
    # 0: the kernel picks. Set when the filter config must name the TLS port (`httpsPort`).
    tls_port: int = 0
    # None: the wsgate filter with `plugin_config`; otherwise these HTTP filters instead.
    http_filters: list[dict] | None = None
    # False: no `require_tls` on the plaintext port (benchmarks of plain requests).
    require_tls: bool = True
    # True: no access log, warnings only (benchmarks: logging every request is not what is measured).
    quiet: bool = False
    # True: listeners come from a watched file, so `reload()` can push a new filter configuration
    # while Envoy runs (ports are then fixed up front: a reload must not move them).
    dynamic: bool = False
    # How long a listener replaced by a reload keeps its connections (dynamic gateways).
    drain_seconds: int = 2
    # Fixed by `start()` for dynamic gateways; 0: the kernel picks.
    plaintext_port: int = 0
    # The listener file's version_info, raised on every reload.
    version: int = 0
    # The bootstrap's `stats_config` (None: Envoy's defaults); see `istio_stats_config`.
    stats_config: dict | None = None
    # More endpoints of the backend cluster (sidecar replicas behind one Service).
    replica_ports: tuple[int, ...] = ()
    # The stateful session filter in header mode with this header name (None: not configured).
    session_header: str | None = None
    # Envoy's `--drain-strategy` (`gradual`, its default, or `immediate`); when set,
    # `--drain-time-s drain_seconds` is passed even to a static gateway (for `drain_listeners`).
    drain_strategy: str | None = None
    # How many times `start()` ran: a restart appends to the log instead of replacing it.
    starts: int = 0
    proc: subprocess.Popen | None = None
    admin: str = ""
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def vm_crashes(self) -> list[str]:
        """Envoy's log lines for a Wasm VM that trapped (a panic in the filter). Under
        FAIL_RELOAD, what the manifests ship, only the crashing request fails and the next one
        gets a new VM, so a crash must be looked for here rather than in later replies."""
        return [line for line in self.log().splitlines()
                if "][wasm]" in line and " failed: Uncaught " in line]

    def start(self, timeout: float = 60.0) -> "Gateway":
        if not ENVOY.exists():
            raise RuntimeError(f"{ENVOY} missing: run testenv/setup.sh (make test does)")
        if self.http_filters is None and not WASM.exists():
            raise RuntimeError(f"{WASM} missing: run `make filter` (make test does)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "bootstrap.json"
        if self.dynamic:
            self.tls_port = self.tls_port or free_port()
            self.plaintext_port = self.plaintext_port or free_port()
            self._write_listeners()
            cfg.write_text(json.dumps(bootstrap(self.backend_port, None, self.listeners_file,
                                                self.stats_config, self.replica_ports), indent=1))
        else:
            cfg.write_text(json.dumps(bootstrap(self.backend_port, self._listeners(), None, self.stats_config,
                                                self.replica_ports), indent=1))
        admin_file = self.workdir / "admin-address"
        admin_file.unlink(missing_ok=True)
        log = open(self.log_path, "ab" if self.starts else "wb")
        self.starts += 1
        drain = self.dynamic or self.drain_strategy is not None
        self.proc = subprocess.Popen(
            [
                str(ENVOY),
                "-c", str(cfg),
                # No hot-restart shared memory, so an Envoy started after one was killed (see
                # `restart()`) cannot trip over what the dead one left; the random base id keeps
                # gateways running side by side apart as well.
                "--disable-hot-restart",
                # Listeners replaced by a reload drain this long, then close (Istio: 45 s).
                *(["--drain-time-s", str(self.drain_seconds)] if drain else []),
                *(["--drain-strategy", self.drain_strategy] if self.drain_strategy else []),
                "--concurrency", "2",
                "--base-id", str(secrets.randbelow(1 << 30)),
                "--admin-address-path", str(admin_file),
                *(["-l", "warning"] if self.quiet else ["-l", "info", "--component-log-level", "wasm:debug"]),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise EnvoyExited(code, self.log())
            if admin_file.exists() and admin_file.read_text().strip():
                self.admin = "http://" + admin_file.read_text().strip()
                try:
                    if self.get("/ready") == "LIVE\n":
                        self._read_ports()
                        return self
                except OSError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"envoy not ready after {timeout}s; log:\n{self.log()}")

    @property
    def listeners_file(self) -> Path:
        return self.workdir / "listeners.json"

    def _listeners(self) -> list[dict]:
        return listeners(self.plugin_config, self.tls, self.tls_port, self.plaintext_port,
                         self.http_filters, self.require_tls, self.quiet, self.session_header)

    def _write_listeners(self) -> None:
        """Envoy watches the file's directory and reads it when it is moved into place."""
        self.version += 1
        # The version in each listener's metadata makes every push a change, so that Envoy
        # replaces (and drains) the listeners even when the filter configuration is the same.
        typed = [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **l,
                  "metadata": {"filter_metadata": {"wsgate-testbed": {"version": self.version}}}}
                 for l in self._listeners()]
        tmp = self.workdir / "listeners.json.tmp"
        tmp.write_text(json.dumps({"version_info": str(self.version), "resources": typed}, indent=1))
        os.replace(tmp, self.listeners_file)

    def stat(self, name: str) -> int:
        """One of Envoy's own counters or gauges (0 if absent)."""
        for line in self.get(f"/stats?filter=^{name}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def reload(self, plugin_config: str, timeout: float = 20.0) -> bool:
        """Pushes `plugin_config` to the running Envoy (dynamic gateways only) and waits for the
        verdict: True once the new listeners serve, False when Envoy rejected the update."""
        if not self.dynamic:
            raise RuntimeError("reload() needs Gateway(dynamic=True)")
        ok0 = self.stat("listener_manager.lds.update_success")
        bad0 = self.stat("listener_manager.lds.update_rejected")
        self.plugin_config = plugin_config
        self._write_listeners()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stat("listener_manager.lds.update_rejected") > bad0:
                return False
            if (self.stat("listener_manager.lds.update_success") > ok0
                    and self.stat("listener_manager.total_listeners_warming") == 0):
                return True
            time.sleep(0.1)
        raise RuntimeError(f"envoy neither accepted nor rejected the listener update in {timeout}s")

    def roll_listeners(self, timeout: float = 20.0) -> None:
        """Replaces the listeners with equal ones (dynamic gateways only), as a push from istiod
        that changes them does: new connections go to the new listeners at once, the old ones
        drain for `drain_seconds` and are then closed, WebSockets included."""
        if not self.dynamic:
            raise RuntimeError("roll_listeners() needs Gateway(dynamic=True)")
        if not self.reload(self.plugin_config, timeout):
            raise RuntimeError("envoy rejected an unchanged listener configuration")

    def drain_listeners(self, graceful: bool = True, skip_exit: bool = False) -> str:
        """`POST /drain_listeners` (`?graceful`, `&skip_exit`), what istio-agent sends when the
        pod is terminated: the listeners stop accepting (with `graceful`, after the drain time;
        with `skip_exit`, never), HTTP/1 responses get `Connection: close`, HTTP/2 a GOAWAY.
        Upgraded connections are left alone (measured with Envoy 1.40: a WebSocket outlives the
        drain time); they end with the listener's replacement (`roll_listeners`) or Envoy's exit."""
        query = "&".join(q for q, on in (("graceful", graceful), ("skip_exit", skip_exit)) if on)
        return self.post("/drain_listeners" + (f"?{query}" if query else ""))

    def post(self, path: str) -> str:
        req = urllib.request.Request(self.admin + path, method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.read().decode()

    def kill(self) -> None:
        """SIGKILL, as a node failure or an OOM kill: no drain, the kernel closes every socket
        (a reset where unread bytes were waiting, a FIN elsewhere)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, timeout: float = 60.0) -> "Gateway":
        """Kills this Envoy if it runs and starts a new process with the same configuration on
        the same listener ports (the admin port may move). Sessions through the old process are
        gone; clients reconnect to the same address."""
        self.kill()
        # The listening sockets died with the process, and Envoy binds with SO_REUSEADDR, so the
        # old connections' TIME_WAIT entries do not keep the ports busy.
        self.tls_port = self.ports.get("tls", self.tls_port)
        self.plaintext_port = self.ports.get("plaintext", self.plaintext_port)
        return self.start(timeout)

    def open_fds(self) -> int:
        return open_fds(self.proc.pid)

    def _read_ports(self) -> None:
        listeners = json.loads(self.get("/listeners?format=json"))
        for st in listeners["listener_statuses"]:
            self.ports[st["name"]] = st["local_address"]["socket_address"]["port_value"]

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.admin + path, timeout=5) as r:
            return r.read().decode()

    def counters(self) -> dict[str, int]:
        """The filter's counters (`wasmcustom.wsgate_*` in `/stats`), by short name."""
        out: dict[str, int] = {}
        for line in self.get("/stats?filter=wsgate_").splitlines():
            name, _, value = line.partition(": ")
            if name.startswith("wasmcustom."):
                out[name.removeprefix("wasmcustom.")] = int(value)
        return out

    def rss_kib(self) -> int:
        return status_kib(self.proc.pid, "VmRSS")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
