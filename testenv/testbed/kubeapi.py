"""A scripted stand-in for the Kubernetes API server (none can run here): answers TokenReview,
SubjectAccessReview and pod lists from fixed tables, records every request, and writes a
kubeconfig pointing at itself so the real sidecar binary (kube-rs) talks to it unchanged.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse


class KubeApiStub:
    def __init__(self, tokens: dict[str, tuple[str, list[str]]], allowed: set[tuple[str, str]], pods: dict[str, list[dict]]):
        self.tokens = tokens  # token → (user, groups)
        self.allowed = allowed  # (user, cluster) pairs a SubjectAccessReview allows
        self.pods = pods  # label selector → pod objects
        self.requests: list[tuple[str, str, dict | None]] = []
        self.failing = False  # answer 500 to everything (API server down)
        # TokenReview: seconds each takes (a loaded API server), and an optional reply of its
        # own: request body -> (status, reply object), e.g. a malformed one.
        self.review_delay = 0.0
        self.review_reply: Callable[[dict], tuple[int, dict]] | None = None
        # TokenReviews received, and the most ever in progress at once (the sidecar's bound).
        self.token_reviews = 0
        self.reviews_in_flight = 0
        self.max_reviews_in_flight = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _reply(self, code: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                path = urlparse(self.path).path
                stub.requests.append(("POST", path, body))
                if stub.failing:
                    return self._reply(500, {"kind": "Status", "status": "Failure", "code": 500})
                if path.endswith("/tokenreviews"):
                    with stub._lock:
                        stub.token_reviews += 1
                        stub.reviews_in_flight += 1
                        stub.max_reviews_in_flight = max(stub.max_reviews_in_flight, stub.reviews_in_flight)
                    time.sleep(stub.review_delay)
                    if stub.review_reply:
                        code, reply = stub.review_reply(body)
                    else:
                        who = stub.tokens.get(body["spec"].get("token", ""))
                        status = {"authenticated": False}
                        if who:
                            status = {"authenticated": True, "user": {"username": who[0], "groups": who[1]}}
                        code, reply = 201, {**body, "status": status}
                    # Done before the reply leaves, so the count never overlaps the next review.
                    with stub._lock:
                        stub.reviews_in_flight -= 1
                    return self._reply(code, reply)
                if path.endswith("/subjectaccessreviews"):
                    spec = body["spec"]
                    ok = (spec["user"], spec["resourceAttributes"]["name"]) in stub.allowed
                    return self._reply(201, {**body, "status": {"allowed": ok}})
                self._reply(404, {"kind": "Status", "code": 404})

            def do_GET(self):
                url = urlparse(self.path)
                stub.requests.append(("GET", self.path, None))
                if stub.failing:
                    return self._reply(500, {"kind": "Status", "status": "Failure", "code": 500})
                selector = parse_qs(url.query).get("labelSelector", [""])[0]
                items = stub.pods.get(selector, [])
                self._reply(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024  # a flood must reach the handler, not die in the backlog

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def write_kubeconfig(self, path: Path, namespace: str) -> Path:
        return write_kubeconfig(path, self.port, namespace)

    def close(self) -> None:
        """Stops answering and closes the port: from now on connections are refused."""
        self.server.shutdown()
        self.server.server_close()


def write_kubeconfig(path: Path, port: int, namespace: str) -> Path:
    """A kubeconfig for the API server at 127.0.0.1:`port` (plain HTTP: kube-rs accepts it)."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "stub",
        "clusters": [{"name": "stub", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "sidecar", "user": {"token": "sidecar-service-account-token"}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "sidecar", "namespace": namespace}}],
    }))
    return path


def pod(name: str, ip: str, head: bool, ready: bool = True) -> dict:
    return {
        "metadata": {"name": name, "labels": {"ray-node-type": "head" if head else "worker"}},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
