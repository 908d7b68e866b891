"""TCP targets that stand in for sshd where a test must see the target's side of a session:
`echo` sends back what it receives (a session that is alive answers), `flood` sends zeros as
fast as the sidecar takes them (a session whose client never reads). Each counts the
connections it has now and has had, so a test can tell when the sidecar let one go.
"""
from __future__ import annotations

import socket
import threading
import time


class TcpTarget:
    def __init__(self, mode: str = "echo") -> None:
        if mode not in ("echo", "flood"):
            raise ValueError(f"mode must be echo or flood, not {mode!r}")
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._open = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._serve, name=f"{mode}-target", daemon=True).start()

    def open_now(self) -> int:
        """Connections the sidecar holds to this target right now."""
        with self._lock:
            return self._open

    def wait_open(self, n: int, timeout: float = 10.0) -> int:
        """The open count once it is `n`, or whatever it is after `timeout`."""
        deadline = time.monotonic() + timeout
        while self.open_now() != n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.open_now()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._open += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            if self.mode == "echo":
                while data := conn.recv(65536):
                    conn.sendall(data)
            else:
                conn.settimeout(0.5)
                chunk = b"\0" * 65536
                while not self._stop.is_set():
                    try:
                        conn.sendall(chunk)
                    except socket.timeout:
                        # A sidecar that stopped reading: check whether it has let go.
                        conn.setblocking(False)
                        try:
                            if conn.recv(1, socket.MSG_PEEK) == b"":
                                break
                        except BlockingIOError:
                            pass
                        conn.settimeout(0.5)
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self._open -= 1

    def close(self) -> None:
        self._stop.set()
        self.sock.close()

    def __enter__(self) -> "TcpTarget":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
