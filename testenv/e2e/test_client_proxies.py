"""`wsgate proxy` (the release binary) through real proxies from Debian's packages: tinyproxy
(HTTP CONNECT: open, with BasicAuth, and with a rule that refuses) and microsocks (SOCKS5, with
and without a user name and password), started by testbed/proxies.py. The settings are the
ones users already have (`wss_proxy`, `https_proxy`, `http_proxy`, `all_proxy`, `no_proxy`) or
`--proxy`. Behind the proxies: the real Envoy with the filter (TLS) or the sidecar (plaintext),
and a throwaway sshd. A proxy's failure is one line naming the proxy, never its credentials.

A loopback server (localhost, 127.0.0.0/8, ::1) never goes through the environment's proxy (a
remote proxy could not reach it, and its plaintext token would leave the machine), so the
servers here are reached as `0.0.0.0` (REMOTE) wherever a proxy from the environment is under
test: not loopback by the client's rule (nor by Go's, kubectl's), so it is treated as any
remote host, proxy and plaintext rules included; yet Linux connects 0.0.0.0 to this machine,
so the proxies reach the loopback sidecar and gateway through it. A token to such a host over
ws:// needs --allow-plaintext, which `run_wsgate` passes unless told not to.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest
import trustme

from testbed.certs import Tls
from testbed.envoy import Gateway
from testbed.proxies import MicroSocks, TinyProxy
from testbed.sidecar import ALICE, Sidecar, standard_args
from testbed.sshd import free_port
from testbed.wsgate import WSGATE, proxy_command

PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "ws_proxy", "WS_PROXY",
              "wss_proxy", "WSS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY")
ROUTES = [{"name": "skypilot-ssh", "prefix": "/kubernetes-pod-ssh-proxy",
           "clusterQueryParam": "cluster_name", "allowedClusters": ["prod", "dev"]}]
# tinyproxy's BasicAuth takes only [-a-z0-9._]; the URL below writes every byte of the
# password percent-encoded, so the client's decoding is what makes it match.
USER, PASSWORD = "alice", "pass-w0rd.x"
ENCODED_PASSWORD = "".join(f"%{b:02X}" for b in PASSWORD.encode())
# Written with `/` as %2F (quote() in testbed/proxies.py).
SOCKS_USER, SOCKS_PASSWORD = "bob", "s0cks/pw"
# The stand-in for a remote server (see the module's docstring).
REMOTE = "0.0.0.0"


def auth_proxy_url(proxy: TinyProxy, password_in_url: str = ENCODED_PASSWORD) -> str:
    return f"http://{USER}:{password_in_url}@127.0.0.1:{proxy.port}"


def env_with(**extra: str) -> dict:
    """The environment without any proxy setting of the caller's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    return {**env, **extra}


def run_wsgate(*args: str, env: dict, allow_plaintext: bool = True) -> subprocess.CompletedProcess:
    """`wsgate proxy` with stdin empty: it connects, gets sshd's banner, and closes. The token
    goes over ws:// to a remote host or through a proxy: --allow-plaintext unless told not to."""
    flags = ["--allow-plaintext"] if allow_plaintext else []
    return subprocess.run([str(WSGATE), "proxy", *args, *flags], stdin=subprocess.DEVNULL, capture_output=True,
                          env=env, timeout=60)


def assert_reached_sshd(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.startswith(b"SSH-2.0-OpenSSH"), r.stdout


def one_line(r: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The one stderr line of a failure with exit `code`, with no secret in it."""
    err = r.stderr.decode()
    assert r.returncode == code, err
    assert err.count("\n") == 1 and err.startswith("wsgate: "), err
    for n in needles:
        assert n in err, (n, err)
    for secret in (PASSWORD, ENCODED_PASSWORD, SOCKS_PASSWORD, "s0cks%2Fpw", "hunter2", ALICE):
        assert secret not in err, err
    return err


def proxy_error(r: subprocess.CompletedProcess, proxy: str, *needles: str) -> str:
    """The one stderr line of a proxy failure: exit 12, names `proxy`, no secret in it."""
    err = r.stderr.decode()
    assert r.returncode == 12, err
    assert err.count("\n") == 1, err
    assert err.startswith(f"wsgate: proxy {proxy}"), err
    for n in needles:
        assert n in err, (n, err)
    for secret in (PASSWORD, ENCODED_PASSWORD, SOCKS_PASSWORD, "s0cks%2Fpw", "hunter2", ALICE):
        assert secret not in err, err
    return err


@pytest.fixture(scope="module")
def side(workdir, sshd):
    sc = Sidecar(workdir / "client-proxies-sidecar", standard_args(workdir, f"127.0.0.1:{sshd.port}")).start()
    yield sc
    sc.stop()


@pytest.fixture(scope="module")
def remote_tls(workdir) -> Tls:
    """A CA and a gateway certificate that also names REMOTE (the suite's names only loopback)."""
    directory = workdir / "client-proxies-tls"
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1", REMOTE)
    tls = Tls(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(tls.ca_pem))
    cert.cert_chain_pems[0].write_to_path(str(tls.cert_pem))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(tls.cert_pem), append=True)
    cert.private_key_pem.write_to_path(str(tls.key_pem))
    return tls


@pytest.fixture(scope="module")
def gw(workdir, remote_tls, side, request):
    g = Gateway(workdir / "client-proxies-gw", json.dumps({"routes": ROUTES}), side.port, remote_tls).start()
    yield g
    g.stop()
    if request.session.testsfailed:
        sys.stderr.write(f"\n===== envoy log (client proxies) =====\n{g.log()[-8000:]}\n")


@pytest.fixture(scope="module")
def http_proxy(workdir):
    with TinyProxy(workdir / "tinyproxy-open") as p:
        yield p


@pytest.fixture(scope="module")
def http_proxy_auth(workdir):
    with TinyProxy(workdir / "tinyproxy-auth", credentials=(USER, PASSWORD)) as p:
        yield p


@pytest.fixture(scope="module")
def http_proxy_refusing(workdir):
    """CONNECT only to port 1: every real target is refused with 403."""
    with TinyProxy(workdir / "tinyproxy-refusing", connect_ports=[1]) as p:
        yield p


@pytest.fixture(scope="module")
def socks(workdir):
    with MicroSocks(workdir / "microsocks-open") as p:
        yield p


@pytest.fixture(scope="module")
def socks_auth(workdir):
    with MicroSocks(workdir / "microsocks-auth", credentials=(SOCKS_USER, SOCKS_PASSWORD)) as p:
        yield p


def plain(side: Sidecar, host: str = REMOTE) -> str:
    return f"http://{host}:{side.port}"


def dead_proxy() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_ssh_over_wss_through_an_http_proxy_with_credentials_from_https_proxy(sshd, gw, remote_tls, http_proxy_auth):
    """The common corporate case: `https_proxy=http://user:password@proxy:port`, a TLS gateway
    behind it. The CONNECT carries Basic credentials (percent-decoded); TLS runs inside the
    tunnel, to the gateway."""
    server = f"https://{REMOTE}:{gw.ports['tls']}"
    px = proxy_command(server, "prod", "--ca-file", str(remote_tls.ca_pem))
    env = {k: "" for k in PROXY_VARS}
    env.update(https_proxy=auth_proxy_url(http_proxy_auth), WSGATE_TOKEN=ALICE)
    r = sshd.run(px, "echo", "through-https-proxy", env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"through-https-proxy\n"
    assert f"{REMOTE}:{gw.ports['tls']}" in http_proxy_auth.connects(), http_proxy_auth.log()


def test_ws_through_http_proxy(side, http_proxy):
    r = run_wsgate(plain(side), "prod", env=env_with(http_proxy=http_proxy.url(), WSGATE_TOKEN=ALICE))
    assert_reached_sshd(r)
    assert f"{REMOTE}:{side.port}" in http_proxy.connects(), http_proxy.log()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_loopback_server_never_goes_through_the_environments_proxy(workdir, side, host):
    """Every proxy variable points at a real tinyproxy; the server is on loopback. The proxy
    is not used (it would connect to its own loopback, and a token meant to stay on this
    machine would reach it in clear): tinyproxy sees no connection at all, the session works,
    and the token needs no --allow-plaintext (nothing leaves the machine)."""
    with TinyProxy(workdir / f"tinyproxy-loopback-{host}") as proxy:
        env = env_with(http_proxy=proxy.url(), HTTP_PROXY=proxy.url(), ws_proxy=proxy.url(),
                       all_proxy=proxy.url(), WSGATE_TOKEN=ALICE)
        before = proxy.settled_log()
        r = run_wsgate(plain(side, host), "prod", "-v", env=env, allow_plaintext=False)
        assert_reached_sshd(r)
        assert "through a proxy" not in r.stderr.decode(), r.stderr.decode()
        assert proxy.settled_log() == before, proxy.log()
        assert proxy.connects() == []


def test_a_loopback_wss_server_never_goes_through_https_proxy(workdir, sshd, gw, remote_tls):
    with TinyProxy(workdir / "tinyproxy-loopback-wss") as proxy:
        before = proxy.settled_log()
        px = proxy_command(f"https://localhost:{gw.ports['tls']}", "prod", "--ca-file", str(remote_tls.ca_pem))
        env = {k: "" for k in PROXY_VARS}
        env.update(https_proxy=proxy.url(), wss_proxy=proxy.url(), WSGATE_TOKEN=ALICE)
        r = sshd.run(px, "echo", "loopback-direct", env=env)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout == b"loopback-direct\n"
        assert proxy.settled_log() == before, proxy.log()


def test_an_explicit_proxy_to_a_loopback_server_needs_allow_plaintext(side, http_proxy):
    """`--proxy` applies to a loopback server too; the token would then leave the machine in
    clear (to the proxy), so ws:// with a token is refused (exit 9) unless --allow-plaintext."""
    before = len(http_proxy.connects())
    shown = f"http://127.0.0.1:{http_proxy.port} (from --proxy)"
    for host in ("127.0.0.1", "localhost"):
        r = run_wsgate(plain(side, host), "prod", "--proxy", http_proxy.url(), env=env_with(WSGATE_TOKEN=ALICE),
                       allow_plaintext=False)
        one_line(r, 9, f"refusing to send a token over plaintext ws:// to {host}:{side.port} through the proxy {shown}",
                 "--proxy none", "--allow-plaintext")
    assert len(http_proxy.connects()) == before, "nothing was sent to the proxy"
    r = run_wsgate(plain(side, "127.0.0.1"), "prod", "--proxy", http_proxy.url(), env=env_with(WSGATE_TOKEN=ALICE))
    assert_reached_sshd(r)
    assert http_proxy.connects()[before:] == [f"127.0.0.1:{side.port}"], http_proxy.log()


def test_the_scheme_specific_variable_wins(side, http_proxy):
    """ws_proxy before http_proxy before all_proxy (the others point at nothing)."""
    env = env_with(ws_proxy=http_proxy.url(), http_proxy=dead_proxy(), ALL_PROXY=dead_proxy(), WSGATE_TOKEN=ALICE)
    before = len(http_proxy.connects())
    assert_reached_sshd(run_wsgate(plain(side), "prod", env=env))
    assert len(http_proxy.connects()) == before + 1
    # wss_proxy is for wss:// only: a ws:// session ignores it.
    env = env_with(wss_proxy=dead_proxy(), https_proxy=dead_proxy(), WSGATE_TOKEN=ALICE)
    assert_reached_sshd(run_wsgate(plain(side), "prod", env=env))


def test_socks5h_with_credentials_from_all_proxy(side, socks_auth):
    """`ALL_PROXY=socks5h://user:password@...`; and with `--proxy`, the proxy resolves the
    name `localhost` itself."""
    url = socks_auth.url("socks5h", SOCKS_USER, SOCKS_PASSWORD)
    r = run_wsgate(plain(side), "prod", "-vv", env=env_with(ALL_PROXY=url, WSGATE_TOKEN=ALICE))
    assert_reached_sshd(r)
    err = r.stderr.decode()
    assert f"socks5h://127.0.0.1:{socks_auth.port} (from ALL_PROXY)" in err, err
    assert SOCKS_PASSWORD not in err and "s0cks%2Fpw" not in err, err
    r = run_wsgate(plain(side, "localhost"), "prod", "-vv", "--proxy", url, env=env_with(WSGATE_TOKEN=ALICE))
    assert_reached_sshd(r)
    err = r.stderr.decode()
    assert f"socks5h://127.0.0.1:{socks_auth.port} (from --proxy)" in err, err
    assert SOCKS_PASSWORD not in err and "s0cks%2Fpw" not in err, err


def test_socks5h_without_or_with_wrong_credentials(side, socks_auth):
    shown = f"socks5h://127.0.0.1:{socks_auth.port} (from all_proxy)"
    r = run_wsgate(plain(side), "prod", env=env_with(all_proxy=socks_auth.url(), WSGATE_TOKEN=ALICE))
    proxy_error(r, shown, "wants a user name and password", "socks5h://USER:PASSWORD@host:port")
    url = socks_auth.url("socks5h", SOCKS_USER, "hunter2")
    r = run_wsgate(plain(side), "prod", env=env_with(all_proxy=url, WSGATE_TOKEN=ALICE))
    proxy_error(r, shown, "refused the user name and password")


def test_socks5_resolves_locally(side, socks, socks_auth):
    """`socks5://`: wsgate resolves `localhost` and gives the proxy the address."""
    r = run_wsgate(plain(side, "localhost"), "prod", "-v", "--proxy", socks.url("socks5"),
                   env=env_with(WSGATE_TOKEN=ALICE))
    assert_reached_sshd(r)
    assert f"socks5://127.0.0.1:{socks.port} (from --proxy)" in r.stderr.decode(), r.stderr.decode()
    # The proxy is on the path: one that wants credentials stops a session without them.
    r = run_wsgate(plain(side), "prod", env=env_with(http_proxy=socks_auth.url("socks5"), WSGATE_TOKEN=ALICE))
    proxy_error(r, f"socks5://127.0.0.1:{socks_auth.port} (from http_proxy)", "wants a user name and password")


@pytest.mark.parametrize(
    "host, no_proxy, bypassed",
    [
        (REMOTE, REMOTE, True),
        (REMOTE, f"example.com, {REMOTE}", True),
        (REMOTE, "*", True),
        (REMOTE, "0.0.0.0/8", True),
        (REMOTE, REMOTE + ":{port}", True),
        (REMOTE, REMOTE + ":1", False),
        (REMOTE, "localhost", False),
        (REMOTE, "127.0.0.0/8", False),
        (REMOTE, ".0.0.0", False),
        (REMOTE, "", False),
        # A loopback server is never proxied from the environment, whatever no_proxy says
        # (Go's httpproxy, kubectl, does the same).
        ("127.0.0.1", "127.0.0.1:1", True),
        ("127.0.0.1", "localhost", True),
        ("127.0.0.1", ".0.0.1", True),
        ("127.0.0.1", "", True),
        ("localhost", "127.0.0.1", True),
        ("localhost", "", True),
    ],
)
def test_no_proxy_bypasses_as_curl_does(side, host, no_proxy, bypassed):
    """The proxy points at nothing: bypassing it is the only way through."""
    dead = dead_proxy()
    env = env_with(http_proxy=dead, NO_PROXY=no_proxy.format(port=side.port), WSGATE_TOKEN=ALICE)
    r = run_wsgate(plain(side, host), "prod", env=env)
    if bypassed:
        assert_reached_sshd(r)
    else:
        proxy_error(r, f"{dead} (from http_proxy)", "cannot connect to the proxy")


def test_the_proxy_flag_overrides_the_environment(side, http_proxy):
    env = env_with(http_proxy=dead_proxy(), no_proxy=REMOTE, WSGATE_TOKEN=ALICE)
    before = len(http_proxy.connects())
    r = run_wsgate(plain(side), "prod", "--proxy", http_proxy.url(), env=env)
    assert_reached_sshd(r)
    assert len(http_proxy.connects()) == before + 1, "--proxy applies even where no_proxy matches"
    r = run_wsgate(plain(side), "prod", "--proxy", "none", env=env_with(http_proxy=dead_proxy(), WSGATE_TOKEN=ALICE))
    assert_reached_sshd(r)


def test_a_proxy_that_wants_credentials(side, http_proxy_auth):
    shown = f"http://127.0.0.1:{http_proxy_auth.port} (from http_proxy)"
    r = run_wsgate(plain(side), "prod", env=env_with(http_proxy=http_proxy_auth.url(), WSGATE_TOKEN=ALICE))
    proxy_error(r, shown, "407", "wants a user name and password: put them in the proxy URL")
    r = run_wsgate(plain(side), "prod",
                   env=env_with(http_proxy=auth_proxy_url(http_proxy_auth, "hunter2"), WSGATE_TOKEN=ALICE))
    # tinyproxy answers bad credentials with 401 (not 407): the client reads both.
    proxy_error(r, shown, "401", "refused the user name and password")
    r = run_wsgate(plain(side), "prod", "-vv",
                   env=env_with(http_proxy=auth_proxy_url(http_proxy_auth), WSGATE_TOKEN=ALICE))
    assert_reached_sshd(r)
    err = r.stderr.decode()
    assert f"http://127.0.0.1:{http_proxy_auth.port} (from http_proxy)" in err, err
    assert PASSWORD not in err and ENCODED_PASSWORD not in err and "Proxy-Authorization" not in err, err


def test_a_proxy_that_refuses(side, http_proxy_refusing):
    shown = f"http://127.0.0.1:{http_proxy_refusing.port} (from --proxy)"
    r = run_wsgate(plain(side), "prod", "--proxy", http_proxy_refusing.url(),
                   env=env_with(WSGATE_TOKEN=ALICE))
    proxy_error(r, shown, f"refused to connect to {REMOTE}:{side.port}: 403", "no_proxy or --proxy none")


def test_nothing_listening_at_the_proxy(side):
    port = free_port()
    r = run_wsgate(plain(side), "prod", "--proxy", f"http://{USER}:hunter2@127.0.0.1:{port}",
                   env=env_with(WSGATE_TOKEN=ALICE))
    proxy_error(r, f"http://127.0.0.1:{port} (from --proxy)", "cannot connect to the proxy", "refused")


def test_an_unsupported_proxy_url_is_named_without_its_secret(side):
    r = run_wsgate(plain(side), "prod", env=env_with(http_proxy="socks4://u:hunter2@127.0.0.1:1"))
    proxy_error(r, "setting http_proxy", "socks4", "http://, socks5h:// or socks5://")
    r = run_wsgate(plain(side), "prod", "--proxy", "https://u:hunter2@127.0.0.1:1", env=env_with())
    err = r.stderr.decode()
    assert r.returncode == 2 and "hunter2" not in err and "https:// proxies" in err, err


@pytest.fixture
def silent_listener():
    """A TCP listener that accepts connections and never says a word (a hung proxy, or a port
    that is no proxy at all)."""
    sock = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    yield sock.getsockname()[1]
    sock.close()
    for conn in held:
        conn.close()


@pytest.mark.parametrize("scheme, stage", [
    ("http", "did not answer CONNECT {target}"),
    ("socks5h", "did not complete the SOCKS5 exchange"),
])
def test_a_proxy_that_never_answers_is_a_proxy_failure(side, silent_listener, scheme, stage):
    """The proxy accepts the connection and says nothing: when --connect-timeout runs out
    before the tunnel is open, it is the proxy's failure (exit 12, naming it without its
    credentials), not the server's."""
    port = silent_listener
    target = f"{REMOTE}:{side.port}"
    r = run_wsgate(plain(side), "prod", "--connect-timeout", "1s", "--proxy",
                   f"{scheme}://{USER}:hunter2@127.0.0.1:{port}", env=env_with(WSGATE_TOKEN=ALICE))
    proxy_error(r, f"{scheme}://127.0.0.1:{port} (from --proxy)",
                f"the proxy accepted the connection but {stage.format(target=target)} within 1s (--connect-timeout)")
    r = run_wsgate(plain(side), "prod", "--connect-timeout", "1s",
                   env=env_with(http_proxy=f"{scheme}://127.0.0.1:{port}", WSGATE_TOKEN=ALICE))
    proxy_error(r, f"{scheme}://127.0.0.1:{port} (from http_proxy)", "within 1s (--connect-timeout)")


def test_a_silent_server_behind_an_open_tunnel_is_not_the_proxys_failure(http_proxy, silent_listener):
    """tinyproxy opens the tunnel; the server behind it never answers: exit 8 (cannot connect
    to the server), the proxy named only as the way it went."""
    port = silent_listener
    r = run_wsgate(f"http://{REMOTE}:{port}", "prod", "--connect-timeout", "1s", "--proxy", http_proxy.url(),
                   env=env_with(WSGATE_TOKEN=ALICE))
    one_line(r, 8, f"cannot connect to {REMOTE}:{port}: no answer within 1s (through the proxy "
                   f"http://127.0.0.1:{http_proxy.port} (from --proxy))")
    assert f"{REMOTE}:{port}" in http_proxy.connects(), http_proxy.log()
