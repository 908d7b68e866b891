"""What clients see when the Wasm VM crashes at run time, under Envoy's two closed failure
policies (`failure_policy` in the filter's PluginConfig; Istio's `failStrategy`).

The module is `testenv/crash-filter`: a request with `x-crash: 1` traps its VM, every other
request passes with `x-crash-filter: alive` added to the response, so a 200 without that header
would be a request that bypassed the filter. Envoy runs one VM per worker thread (the test bed
starts two workers), so the exact claims are pinned down on one keep-alive connection, which
Envoy serves on the worker that accepted it, i.e. always with the same VM:

- the crashing request gets 503 with an empty body and response code details
  `wasm_fail_stream` (recorded with `%RESPONSE_CODE_DETAILS%` in the access log), and never
  reaches the backend;
- FAIL_CLOSED: every later request on that worker gets the same 503, for longer than any reload
  backoff, and none reaches the backend. Other workers' VMs are untouched and keep filtering:
  only once every worker's VM has crashed does every request get 503, until new configuration
  (a changed plugin configuration is enough) gives every worker a new VM;
- FAIL_RELOAD: Envoy creates a new VM for a later request, and that request is filtered again.
  The backoff (`reload_config.backoff.base_interval`, 1 s by default; each check draws an
  interval between 1 and 1.5 times it) counts from the worker's last VM (re)load, not from the
  crash: a VM that had run longer than that is replaced for the very next request, and only a
  VM that crashes within the backoff of its own load leaves its worker answering 503 until 1 to
  1.5 s after that load;
- under neither policy does a response come back unfiltered.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.envoy import ROOT, Gateway, wasm_filter

CRASH_WASM = Path(os.environ.get(
    "WSGATE_CRASH_WASM", ROOT / "target" / "wasm32-wasip1" / "wasm-release" / "wsgate_crash_filter.wasm"))

# Envoy's default `reload_config.backoff.base_interval`; a reload waits up to 1.5 times it.
RELOAD_BASE_SECONDS = 1.0
# How long FAIL_CLOSED must keep refusing: well past any reload FAIL_RELOAD would have made.
CLOSED_WATCH_SECONDS = 4.0
# How long FAIL_RELOAD may take to filter again on the crashed worker.
RELOAD_DEADLINE_SECONDS = 10.0

ACCESS_MARK = "failure-policy-access"
ACCESS_LINE = re.compile(rf"^{ACCESS_MARK} id=(\S*) code=(\d+) details=(\S+) upstream=(\S+)$", re.M)


@dataclass
class Reply:
    test_id: str
    status: int
    marker: str | None  # the filter's `x-crash-filter` response header
    body: bytes
    sent: float  # time.monotonic() before the request was written
    at: float  # time.monotonic() when the response arrived

    @property
    def filtered_pass(self) -> bool:
        return self.status == 200 and self.marker == "alive"

    @property
    def refused(self) -> bool:
        """The failure policy's answer: 503, empty body, nothing from the filter."""
        return self.status == 503 and self.body == b"" and self.marker is None


class CrashGateway(Gateway):
    """The test bed's Envoy with the crash filter, and an access log that names each request's
    `x-test-id`, status and `%RESPONSE_CODE_DETAILS%`."""

    def _listeners(self) -> list[dict]:
        out = super()._listeners()
        fmt = (f"{ACCESS_MARK} id=%REQ(X-TEST-ID)% code=%RESPONSE_CODE% details=%RESPONSE_CODE_DETAILS% "
               "upstream=%UPSTREAM_HOST%\n")
        for listener in out:
            hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
            for log in hcm["access_log"]:
                log["typed_config"]["log_format"] = {"text_format_source": {"inline_string": fmt}}
        return out

    def access(self) -> dict[str, tuple[int, str, str]]:
        """test id -> (status, response code details, upstream host) (complete once stopped)."""
        return {m[0]: (int(m[1]), m[2], m[3]) for m in ACCESS_LINE.findall(self.log())}

    def reload_stat(self, event: str, expect=lambda n: True, timeout: float = 8.0) -> int:
        """`wasm.<plugin name>.vm_reload_<event>` (the test bed names the plugin `wsgate`),
        polled until `expect(value)` holds or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.stat(f"wasm.wsgate.vm_reload_{event}")
            if expect(value) or time.monotonic() > deadline:
                return value
            time.sleep(0.1)


def _request(conn: http.client.HTTPConnection, crash: bool) -> Reply:
    test_id = "fp-" + uuid.uuid4().hex
    headers = {"x-test-id": test_id}
    if crash:
        headers["x-crash"] = "1"
    sent = time.monotonic()
    conn.request("GET", "/failure-policy", headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    return Reply(test_id, resp.status, resp.getheader("x-crash-filter"), body, sent, time.monotonic())


class Pinned:
    """One keep-alive HTTP/1.1 connection: every request on it meets the same worker's VM."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.connect()
        self.local = self.conn.sock.getsockname()

    def get(self, crash: bool = False) -> Reply:
        reply = _request(self.conn, crash)
        # http.client would quietly open a new connection, which may land on another worker.
        assert self.conn.sock is not None and self.conn.sock.getsockname() == self.local, (
            f"Envoy closed the pinned connection after a {reply.status}")
        return reply

    def close(self) -> None:
        self.conn.close()


def fresh_get(port: int, crash: bool = False) -> Reply:
    """One request on a new connection (the kernel picks the worker)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return _request(conn, crash)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def crash_module() -> Path:
    if not CRASH_WASM.exists():
        pytest.fail(f"{CRASH_WASM} missing: run `make crash-filter` (make e2e does), "
                    "or point WSGATE_CRASH_WASM at the built wsgate-crash-filter module")
    return CRASH_WASM


@pytest.fixture
def start_gateway(workdir, backend, tls, crash_module, request):
    """Starts a gateway running the crash filter under a failure policy; stops it after the test."""
    started: list[CrashGateway] = []

    def start(policy: str, dynamic: bool = False) -> CrashGateway:
        gw = CrashGateway(
            workdir / f"failure-{policy.lower()}-{uuid.uuid4().hex[:8]}", "", backend.port, tls,
            http_filters=[wasm_filter("", crash_module, "crash", failure_policy=policy)],
            require_tls=False, dynamic=dynamic,
        ).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
        if request.session.testsfailed:
            sys.stderr.write(f"\n===== envoy log ({gw.log_path}) =====\n{gw.log()[-8000:]}\n")


def reached_backend(backend, replies: list[Reply]) -> list[Reply]:
    """The replies whose request the backend received (after a moment for stragglers)."""
    time.sleep(0.3)
    return [r for r in replies if backend.find(r.test_id, timeout=0) is not None]


def unfiltered(replies: list[Reply]) -> list[Reply]:
    """Anything other than a filtered 200 or the failure policy's 503: what must never happen."""
    return [r for r in replies if not (r.filtered_pass or r.refused)]


def assert_access_log(gw: CrashGateway, replies: list[Reply]) -> None:
    """After `gw.stop()` (Envoy flushes its log then): each 503 is `wasm_fail_stream` with no
    upstream, each 200 went `via_upstream`."""
    access = gw.access()
    for r in replies:
        assert r.test_id in access, f"{r.test_id} missing from the access log"
        code, details, upstream = access[r.test_id]
        assert code == r.status
        if r.status == 503:
            assert (details, upstream) == ("wasm_fail_stream", "-"), access[r.test_id]
        else:
            assert details == "via_upstream", access[r.test_id]


def crash_pinned_worker(gw: CrashGateway, backend) -> tuple[Pinned, Reply, Reply]:
    """A filtered 200, then a crashing request on the same connection: 503, empty body."""
    pinned = Pinned(gw.ports["plaintext"])
    first = pinned.get()
    assert first.filtered_pass, first
    assert backend.find(first.test_id) is not None
    crash = pinned.get(crash=True)
    assert crash.refused, crash
    return pinned, first, crash


def crash_every_worker(port: int) -> list[Reply]:
    """FAIL_CLOSED: crash requests on new connections (one that meets a dead VM just gets 503)
    until 20 new connections in a row are refused, i.e. every worker's VM is dead."""
    crashes: list[Reply] = []
    deadline = time.monotonic() + 20
    while True:
        crashes.append(fresh_get(port, crash=True))
        probes = [fresh_get(port) for _ in range(20)]
        assert unfiltered(probes) == [], unfiltered(probes)[:3]
        if all(r.refused for r in probes):
            break
        assert time.monotonic() < deadline, "a worker kept a live VM through 20 s of crash requests"
    assert all(r.refused for r in crashes), crashes
    return crashes


def test_fail_closed_refuses_every_later_request_on_the_crashed_worker(start_gateway, backend):
    gw = start_gateway("FAIL_CLOSED")
    pinned, first, crash = crash_pinned_worker(gw, backend)
    later: list[Reply] = []
    deadline = time.monotonic() + CLOSED_WATCH_SECONDS
    while time.monotonic() < deadline:
        later.append(pinned.get())
        time.sleep(0.05)
    pinned.close()
    assert later and all(r.refused for r in later), [r for r in later if not r.refused][:3]
    assert reached_backend(backend, [crash, *later]) == []
    assert gw.reload_stat("success") == 0
    gw.stop()
    assert_access_log(gw, [first, crash, *later])


def test_fail_closed_is_per_worker_until_every_worker_has_crashed(start_gateway, backend):
    gw = start_gateway("FAIL_CLOSED")
    port = gw.ports["plaintext"]
    workers = json.loads(gw.get("/server_info"))["command_line_options"]["concurrency"]
    assert workers == 2, "the test bed runs two workers"
    pinned, _, crash = crash_pinned_worker(gw, backend)
    pinned.close()

    # One worker's VM is dead; the other's still filters. New connections meet either.
    mixed = [fresh_get(port) for _ in range(40)]
    assert unfiltered(mixed) == [], unfiltered(mixed)[:3]
    assert any(r.refused for r in mixed) and any(r.filtered_pass for r in mixed), (
        "expected both the crashed worker's 503 and the healthy worker's filtered 200 "
        f"({sum(r.refused for r in mixed)} refused of {len(mixed)})")
    assert reached_backend(backend, [crash, *(r for r in mixed if r.refused)]) == []

    # Crash the remaining VM: now every request is refused.
    crashes = crash_every_worker(port)

    later: list[Reply] = []
    deadline = time.monotonic() + CLOSED_WATCH_SECONDS
    while time.monotonic() < deadline:
        later.append(fresh_get(port))
        time.sleep(0.05)
    assert all(r.refused for r in later), [r for r in later if not r.refused][:3]
    assert reached_backend(backend, [*crashes, *later]) == []
    assert gw.reload_stat("success") == 0
    gw.stop()
    assert_access_log(gw, [crash, *crashes, *later])


def test_fail_closed_recovers_with_new_config(start_gateway, crash_module):
    """A configuration push (here only the plugin configuration changes, as when istiod pushes
    an edited WasmPlugin) gives every worker a new VM."""
    gw = start_gateway("FAIL_CLOSED", dynamic=True)
    port = gw.plaintext_port
    crash_every_worker(port)
    gw.http_filters = [wasm_filter("edited", crash_module, "crash", failure_policy="FAIL_CLOSED")]
    assert gw.reload(gw.plugin_config), "Envoy rejected the new configuration"
    replies = [fresh_get(port) for _ in range(20)]
    assert all(r.filtered_pass for r in replies), [r for r in replies if not r.filtered_pass][:3]


def test_fail_reload_filters_again_with_a_new_vm(start_gateway, backend):
    gw = start_gateway("FAIL_RELOAD")
    pinned = Pinned(gw.ports["plaintext"])
    first = pinned.get()
    assert first.filtered_pass, first
    # A VM older than the longest reload interval: the next request after a crash reloads.
    time.sleep(RELOAD_BASE_SECONDS * 1.5 + 0.2)

    crash = pinned.get(crash=True)
    assert crash.refused, crash
    after = pinned.get()
    assert after.filtered_pass, f"the request after the crash should meet a new VM: {after}"

    # Crash the new VM at once: it was loaded less than the backoff ago, so the worker answers
    # 503 until the backoff has passed, then a new VM filters again.
    crash_again = pinned.get(crash=True)
    assert crash_again.refused, crash_again
    between: list[Reply] = []
    recovered = None
    deadline = time.monotonic() + RELOAD_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        r = pinned.get()
        if r.filtered_pass:
            recovered = r
            break
        between.append(r)
        time.sleep(0.05)
    pinned.close()
    assert recovered is not None, f"no filtered 200 within {RELOAD_DEADLINE_SECONDS}s of the crash"
    assert all(r.refused for r in between), [r for r in between if not r.refused][:3]
    assert between, "the backoff should have refused requests between the crash and the reload"
    # The backoff counts from the reload that served `after` (made after `after` was sent), at
    # least the base interval.
    assert recovered.at - after.sent >= RELOAD_BASE_SECONDS, recovered.at - after.sent
    assert recovered.at - crash_again.at <= RELOAD_BASE_SECONDS * 1.5 + 2.0, recovered.at - crash_again.at
    assert gw.reload_stat("success", lambda n: n == 2) == 2
    assert gw.reload_stat("backoff", lambda n: n >= 1) >= 1
    assert reached_backend(backend, [crash, crash_again, *between]) == []
    assert backend.find(recovered.test_id) is not None
    gw.stop()
    assert_access_log(gw, [first, crash, after, crash_again, *between, recovered])
    # What the other suites' gateways look for to catch a crash FAIL_RELOAD would hide.
    assert len(gw.vm_crashes()) == 2, gw.vm_crashes()


def test_fail_reload_never_lets_a_request_through_unfiltered(start_gateway, backend):
    """New connections right after crashing both workers' VMs back to back."""
    gw = start_gateway("FAIL_RELOAD")
    port = gw.ports["plaintext"]
    replies = [fresh_get(port, crash=True) for _ in range(6)]
    assert all(r.refused for r in replies), replies
    deadline = time.monotonic() + RELOAD_DEADLINE_SECONDS
    streak = 0
    while streak < 20:
        assert time.monotonic() < deadline, "the workers did not all filter again within the deadline"
        r = fresh_get(port)
        replies.append(r)
        streak = streak + 1 if r.filtered_pass else 0
        time.sleep(0.02)
    assert unfiltered(replies) == [], unfiltered(replies)[:3]
    assert reached_backend(backend, [r for r in replies if r.refused]) == []
    gw.stop()
    assert_access_log(gw, replies)
