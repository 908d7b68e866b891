"""How the real `wsgate-sidecar` binary reads its settings: flags, then `WSGATE_*` environment
variables, then the `--config` file, and every unknown `WSGATE_*` name is an error at start.

A misspelt setting must stop the sidecar, not quietly leave a protection off: a file line
`WSGATE_AUTHZ_POLICIES=...` (for `WSGATE_AUTHZ_POLICY`) would otherwise run with every
authenticated user allowed everywhere.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from testbed.sidecar import ALICE, POLICY, SIDECAR, TOKENS, Sidecar
from testbed.sshd import free_port

ROOT = Path(__file__).resolve().parents[2]

# What Kubernetes puts in every pod of a namespace holding a Service named `wsgate-sidecar`
# with one port `http-ws` 8080/TCP (service links, on unless `enableServiceLinks: false`).
SERVICE_LINKS = {
    "WSGATE_SIDECAR_SERVICE_HOST": "10.96.12.34",
    "WSGATE_SIDECAR_SERVICE_PORT": "8080",
    "WSGATE_SIDECAR_SERVICE_PORT_HTTP_WS": "8080",
    "WSGATE_SIDECAR_PORT": "tcp://10.96.12.34:8080",
    "WSGATE_SIDECAR_PORT_8080_TCP": "tcp://10.96.12.34:8080",
    "WSGATE_SIDECAR_PORT_8080_TCP_PROTO": "tcp",
    "WSGATE_SIDECAR_PORT_8080_TCP_PORT": "8080",
    "WSGATE_SIDECAR_PORT_8080_TCP_ADDR": "10.96.12.34",
}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any WSGATE_* name (the suite's own, such as
    WSGATE_WASM, are covered by `test_names_of_the_other_wsgate_programs_do_not_stop_it`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    env.update(extra)
    return env


def write_settings(path: Path, workdir: Path, target: str, *extra_lines: str) -> Path:
    """A config file carrying the test bed's standard pod-side settings."""
    tokens = workdir / "tokens"
    tokens.write_text(TOKENS)
    policy = workdir / "policy.json"
    policy.write_text(json.dumps(POLICY))
    path.write_text("\n".join([
        "# the test bed's standard identities, pod-side",
        f"WSGATE_TARGET={target}",
        "",
        "WSGATE_AUTH=token-file",
        f'WSGATE_TOKEN_FILE="{tokens}"',
        f"WSGATE_AUTHZ_POLICY={policy}",
        "WSGATE_ALLOWED_CLUSTERS=prod,dev",
        "WSGATE_PATH=/ssh/{cluster}",
        "WSGATE_LOG_FORMAT=json",
        *extra_lines,
    ]) + "\n")
    return path


def run_to_exit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Runs the sidecar on free ports, expecting it to stop by itself at start."""
    if not SIDECAR.exists():
        pytest.fail(f"{SIDECAR} missing: `make sidecar` (make test does)")
    cmd = [str(SIDECAR), "--listen", f"127.0.0.1:{free_port()}",
           "--admin-listen", f"127.0.0.1:{free_port()}", *args]
    try:
        return subprocess.run(cmd, capture_output=True, env=env, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the sidecar kept running: {cmd} should have been refused at start")


def test_a_misspelt_name_in_the_config_file_stops_it_and_names_the_line(tmp_path):
    # Line 1 is the comment, so the misspelt line is line 3.
    cfg = tmp_path / "sidecar.env"
    cfg.write_text("# pod-side\nWSGATE_AUTH=none\nWSGATE_AUTHZ_POLICIES=/etc/wsgate/policy.json\n")
    r = run_to_exit("--config", str(cfg), "--allow-unauthenticated", env=clean_env())
    err = r.stderr.decode()
    assert r.returncode != 0, err
    assert f"{cfg}:3: WSGATE_AUTHZ_POLICIES is not a setting; did you mean WSGATE_AUTHZ_POLICY?" in err


def test_the_config_file_named_by_WSGATE_CONFIG_is_checked_the_same(tmp_path):
    cfg = tmp_path / "sidecar.env"
    cfg.write_text("WSGATE_AUTH=none\nWSGATE_ALOW_UNAUTHENTICATED=true\n")
    r = run_to_exit(env=clean_env(WSGATE_CONFIG=str(cfg)))
    err = r.stderr.decode()
    assert r.returncode != 0, err
    assert f"{cfg}:2: WSGATE_ALOW_UNAUTHENTICATED is not a setting; did you mean WSGATE_ALLOW_UNAUTHENTICATED?" in err


def test_an_unknown_wsgate_environment_variable_stops_it(tmp_path):
    r = run_to_exit("--auth", "none", "--allow-unauthenticated",
                    env=clean_env(WSGATE_MAX_SESION="4"))
    err = r.stderr.decode()
    assert r.returncode != 0, err
    assert "environment variable WSGATE_MAX_SESION is not a setting; did you mean WSGATE_MAX_SESSIONS?" in err


def test_a_bad_value_names_where_it_came_from(tmp_path):
    cfg = tmp_path / "sidecar.env"
    cfg.write_text("WSGATE_AUTH=none\nWSGATE_ALLOW_UNAUTHENTICATED=true\nWSGATE_MAX_SESSIONS=lots\n")
    r = run_to_exit("--config", str(cfg), env=clean_env())
    err = r.stderr.decode()
    assert r.returncode != 0, err
    assert f"{cfg}:3: WSGATE_MAX_SESSIONS: invalid value 'lots'" in err


def test_kubernetes_service_links_stop_it_with_the_fix_named():
    """The design: service-link names are refused like any unknown name (ignoring their shapes
    would also hide typos such as `WSGATE_KUB_PORT`), and the message says how to turn them off;
    the shipped manifests set `enableServiceLinks: false` (test_manifests.py checks)."""
    r = run_to_exit("--auth", "none", "--allow-unauthenticated", env=clean_env(**SERVICE_LINKS))
    err = r.stderr.decode()
    assert r.returncode != 0, err
    for name in SERVICE_LINKS:
        assert f"environment variable {name} is not a setting" in err
    assert "enableServiceLinks: false" in err
    assert "`wsgate-sidecar`" in err


def test_a_good_config_file_starts_serves_and_applies_every_line(tmp_path, sshd):
    cfg = write_settings(tmp_path / "sidecar.env", tmp_path, f"127.0.0.1:{sshd.port}")
    sc = Sidecar(tmp_path / "good", ["--config", str(cfg)])
    sc.env = clean_env(WSGATE_LOG="info")
    with sc:
        for port in (sc.port, sc.admin_port):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                assert r.status == 200
        # The target, the token file and the generic path all came from the file.
        with connect(f"ws://127.0.0.1:{sc.port}/ssh/prod?client_version=62",
                     additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=10) as ws:
            banner = ws.recv(timeout=10)
            assert banner[:1] == b"\x00" and banner[1:].startswith(b"SSH-2.0-")
        with pytest.raises(InvalidStatus) as e:
            connect(f"ws://127.0.0.1:{sc.port}/ssh/prod", additional_headers={"Authorization": "Bearer nope"},
                    open_timeout=10)
        assert e.value.response.status_code == 401


def test_flags_beat_the_environment_which_beats_the_file(tmp_path, sshd):
    cfg = write_settings(tmp_path / "sidecar.env", tmp_path, f"127.0.0.1:{sshd.port}")
    # The file allows prod and dev; the environment narrows that to dev; a flag sets the path.
    sc = Sidecar(tmp_path / "precedence", ["--config", str(cfg), "--path", "/shell/{cluster}"])
    sc.env = clean_env(WSGATE_LOG="info", WSGATE_ALLOWED_CLUSTERS="dev")
    with sc:
        auth = {"Authorization": f"Bearer {ALICE}"}
        with connect(f"ws://127.0.0.1:{sc.port}/shell/dev?client_version=62", additional_headers=auth,
                     open_timeout=10) as ws:
            assert ws.recv(timeout=10)[:1] == b"\x00"
        for url, status in ((f"ws://127.0.0.1:{sc.port}/shell/prod", 404),
                            (f"ws://127.0.0.1:{sc.port}/ssh/dev", 404)):
            with pytest.raises(InvalidStatus) as e:
                connect(url, additional_headers=auth, open_timeout=10)
            assert e.value.response.status_code == status, url


def test_a_bool_flag_from_the_file(tmp_path):
    """`--allow-unauthenticated` from a file line `...=true`: --auth none starts with it and is
    refused without it (`false`)."""
    good = tmp_path / "open.env"
    good.write_text("WSGATE_AUTH=none\nWSGATE_ALLOW_UNAUTHENTICATED=true\n")
    sc = Sidecar(tmp_path / "open", ["--config", str(good)])
    sc.env = clean_env(WSGATE_LOG="info")
    with sc:
        assert sc.admin("/healthz")[0] == 200
    off = tmp_path / "off.env"
    off.write_text("WSGATE_AUTH=none\nWSGATE_ALLOW_UNAUTHENTICATED=false\n")
    r = run_to_exit("--config", str(off), env=clean_env())
    assert r.returncode != 0
    assert "--allow-unauthenticated" in r.stderr.decode()


def other_programs_names() -> set[str]:
    """Every WSGATE_* name the rest of the repository reads or sets (the client, the test bed,
    the benches, the build and kind scripts), minus this file's deliberate misspellings."""
    names: set[str] = set()
    here = Path(__file__).resolve()
    for top in ("Makefile", "client", "filter", "bench", "testenv", "images"):
        base = ROOT / top
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file()]
        for p in files:
            if p.resolve() == here or "target" in p.parts or p.suffix not in {"", ".rs", ".py", ".sh", ".yaml", ".toml", ".md"}:
                continue
            try:
                names |= set(re.findall(r"\bWSGATE_[A-Z0-9_]*[A-Z0-9]\b", p.read_text(errors="replace")))
            except OSError:
                pass
    # Kubernetes' service-link names quoted in docs and tests are not read by any program;
    # test_kubernetes_service_links_stop_it_with_the_fix_named covers them.
    return {n for n in names if not re.search(r"_SERVICE_(HOST|PORT)|_PORT_\d+_", n)}


def settings_in_help() -> set[str]:
    r = subprocess.run([str(SIDECAR), "--help"], capture_output=True, env=clean_env(), timeout=10)
    assert r.returncode == 0, r.stderr.decode()
    return set(re.findall(r"\bWSGATE_[A-Z0-9_]*[A-Z0-9]\b", r.stdout.decode()))


def settings_in_the_docs() -> list[str]:
    """The environment names of docs/sidecar-config.md's table of every setting (a unit test
    keeps that table generated from the flags: `settings_table_in_the_docs_is_current`)."""
    doc = (ROOT / "docs" / "sidecar-config.md").read_text()
    table = doc.split("<!-- settings table:", 1)[1].split("<!-- end of settings table -->", 1)[0]
    return re.findall(r"^\| `--[a-z0-9-]+` \| `(WSGATE_[A-Z0-9_]+)` \|", table, re.MULTILINE)


def test_help_names_every_setting_by_its_environment_variable():
    """The real binary's `--help` gives every setting of the docs' table its `[env: ...]` name,
    and no other (the log filter's `WSGATE_LOG` too, not just `WSGATE_LOG_FORMAT`)."""
    r = subprocess.run([str(SIDECAR), "--help"], capture_output=True, env=clean_env(), timeout=10)
    assert r.returncode == 0, r.stderr.decode()
    in_help = re.findall(r"\[env: (WSGATE_[A-Z0-9_]+)=", r.stdout.decode())
    in_docs = settings_in_the_docs()
    assert len(in_docs) >= 40 and "WSGATE_LOG" in in_docs, in_docs
    assert len(set(in_help)) == len(in_help), "a name twice in --help"
    assert sorted(in_help) == sorted(in_docs), (
        f"only in --help: {sorted(set(in_help) - set(in_docs))}; "
        f"only in the docs: {sorted(set(in_docs) - set(in_help))}")


def test_names_of_the_other_wsgate_programs_do_not_stop_it(tmp_path):
    """A shell or CI job running the client, the test bed or the benches carries their WSGATE_*
    variables (`make test` sets WSGATE_WASM for this very suite); the sidecar must start there.
    A new such name elsewhere in the repository fails here until the sidecar knows it."""
    foreign = other_programs_names() - settings_in_help()
    assert "WSGATE_WASM" in foreign and "WSGATE_TOKEN" in foreign, foreign
    sc = Sidecar(tmp_path / "foreign", ["--auth", "none", "--allow-unauthenticated"])
    sc.env = clean_env(**{n: "x" for n in foreign})
    sc.env["WSGATE_LOG"] = "info"
    try:
        sc.start()
    except RuntimeError as e:
        pytest.fail(f"with {sorted(foreign)} set: {e}")
    finally:
        sc.stop()
