"""wsgate-sidecar with `--auth token-review`, against the real release binary and a real sshd.
Only the Kubernetes API server is mocked (`testbed/kubeapi.py`, a scripted stand-in: no cluster
can run here); the sidecar's kube-rs client talks HTTP to it through a kubeconfig.

Pins: a flood of distinct bad tokens costs the API server at most the configured bound (the
rest get 503 with Retry-After, cached tokens keep working), and no token reaches the log at any
level, even when the API server's reply is malformed and echoes it.
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from websockets.sync.client import connect

from clients import raw_request, upgrade_headers
from testbed.kubeapi import KubeApiStub
from testbed.sidecar import Sidecar

GOOD = "k8s-token-alice-0123456789"
SERVICE_ACCOUNT = "sidecar-service-account-token"  # the kubeconfig's (testbed/kubeapi.py)
SKY = "/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=0&client_version=62"


def review_sidecar(workdir, name: str, api: KubeApiStub, sshd, *extra: str, env=None) -> Sidecar:
    kubeconfig = api.write_kubeconfig(workdir / f"{name}.kubeconfig", "default")
    args = ["--target", f"127.0.0.1:{sshd.port}", "--auth", "token-review", "--log-format", "json", *extra]
    return Sidecar(workdir / name, args, env={"KUBECONFIG": str(kubeconfig), **(env or {})})


def open_session(port: int, token: str) -> bytes:
    with connect(f"ws://127.0.0.1:{port}{SKY}", additional_headers={"Authorization": f"Bearer {token}"},
                 open_timeout=10) as ws:
        return ws.recv(timeout=10)


@pytest.mark.parametrize(
    "flags, concurrency, rate, burst",
    [
        ((), 8, 20, 40),  # the defaults
        (("--token-review-max-concurrency", "2", "--token-review-rate", "5", "--token-review-burst", "10"), 2, 5, 10),
    ],
    ids=["defaults", "flags"],
)
def test_a_flood_of_distinct_bad_tokens_is_bounded_before_the_api_server(workdir, sshd, flags, concurrency, rate,
                                                                          burst):
    """300 distinct bad tokens from 30 threads, against an API server that takes 50 ms a review:
    it sees at most `concurrency` reviews at once and `burst + rate × elapsed` in all; every other
    answer is 503 `auth_throttled` with Retry-After, counted in the metrics; a cached good token
    opens a session in the middle of the flood."""
    api = KubeApiStub(tokens={GOOD: ("alice", ["sre"])}, allowed=set(), pods={})
    api.review_delay = 0.05
    try:
        with review_sidecar(workdir, f"flood-{len(flags)}", api, sshd, "--auth-cache-ttl", "5m", *flags) as sc:
            assert open_session(sc.port, GOOD).startswith(b"\x00SSH-2.0-")  # reviewed, cached
            sent_before = api.token_reviews
            answers: list[tuple[int, str | None, str]] = []

            def flood(i: int) -> None:
                for j in range(10):
                    r = raw_request(sc.port, SKY, upgrade_headers("flood") + [("Authorization", f"Bearer bad-{i}-{j}")])
                    answers.append((r.status, r.headers.get("retry-after"), r.json()["reason"]))

            threads = [threading.Thread(target=flood, args=(i,)) for i in range(30)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            time.sleep(0.2)
            during = open_session(sc.port, GOOD)
            for t in threads:
                t.join(60)
            elapsed = time.monotonic() - t0

            assert during.startswith(b"\x00SSH-2.0-"), "the cached token works during the flood"
            sent = api.token_reviews - sent_before
            assert api.max_reviews_in_flight <= concurrency
            assert sent <= burst + rate * elapsed + 1, f"{sent} reviews in {elapsed:.1f} s"
            kinds = Counter((status, retry, reason) for status, retry, reason in answers)
            assert len(answers) == 300
            assert set(kinds) <= {(401, None, "invalid_credentials"), (503, "1", "auth_throttled")}, kinds
            throttled = kinds[(503, "1", "auth_throttled")]
            assert throttled > 0 and kinds[(401, None, "invalid_credentials")] == sent
            assert sc.metric('wsgate_token_reviews_total{result="throttled"}') == throttled
            assert sc.metric('wsgate_handshake_failures_total{reason="auth_throttled"}') == throttled
            assert sc.metric('wsgate_token_reviews_total{result="rejected"}') == sent
            assert sc.metric("wsgate_token_review_duration_seconds_count") == sent + 1
    finally:
        api.close()


@pytest.mark.parametrize("level", ["info", "debug", "trace", "kube_client::client=trace,hyper_util=trace,debug"])
def test_a_malformed_review_reply_is_refused_and_no_token_is_logged(workdir, sshd, level):
    """The API server's reply has `status.authenticated` as the string "true" and echoes
    `spec.token` (kube-rs used to log such a body at WARN). The handshake is refused with 503,
    never accepted, and neither the caller's token nor the sidecar's service-account token
    appears in the log at WSGATE_LOG=info (the default), debug, trace, or with directives that
    name the body-printing targets themselves."""
    api = KubeApiStub(tokens={}, allowed=set(), pods={})
    api.review_reply = lambda body: (201, {**body, "status": {"authenticated": "true",
                                                              "user": {"username": "mallory"}}})
    token = f"k8s-token-never-logged-{len(level)}"
    try:
        with review_sidecar(workdir, f"malformed-{len(level)}", api, sshd, env={"WSGATE_LOG": level}) as sc:
            r = raw_request(sc.port, SKY, upgrade_headers("malformed") + [("Authorization", f"Bearer {token}")])
            assert (r.status, r.json()["reason"]) == (503, "auth_unavailable")
            assert api.token_reviews == 1 and api.requests[-1][2]["spec"]["token"] == token
            # An error reply that is not a Status, with the token in it: refused, not logged.
            api.review_reply = lambda body: (400, body)
            r = raw_request(sc.port, SKY, upgrade_headers("malformed") + [("Authorization", f"Bearer {token}-2")])
            assert (r.status, r.json()["reason"]) == (503, "auth_unavailable")
            sc.stop()
            log = sc.log()
            assert "TokenReview" in log  # the failure is logged, without the body
            assert token not in log
            assert SERVICE_ACCOUNT not in log
    finally:
        api.close()
