"""Throwaway TLS material for the test bed: a CA and a server certificate made per run (trustme)."""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class Tls:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path

    def client_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_pem))
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


def make_tls(directory: Path) -> Tls:
    """Writes a CA and a certificate for localhost/127.0.0.1 into `directory`."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    tls = Tls(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(tls.ca_pem))
    cert.cert_chain_pems[0].write_to_path(str(tls.cert_pem))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(tls.cert_pem), append=True)
    cert.private_key_pem.write_to_path(str(tls.key_pem))
    return tls
