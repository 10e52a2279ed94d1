"""A throwaway self-signed certificate for loopback TLS servers in tests, and its server context."""
from __future__ import annotations

import ssl
import subprocess
from pathlib import Path


def make_cert(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, made with openssl, valid two days."""
    key, crt = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(crt), "-days", "2"],
                   check=True, capture_output=True)
    return crt, key


def server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*cert)
    return ctx
