"""Certificates made for a test with the ``openssl`` command: a CA, a server, clients."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files in ``folder``; the server certificate is valid for 127.0.0.1 and localhost."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def key(self) -> Path:
        return self.folder / "server.key"

    @property
    def client_cert(self) -> Path:
        """Signed by the CA, SAN ``DNS:scraper.example``."""
        return self.folder / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.folder / "client.key"

    @property
    def stranger_cert(self) -> Path:
        """Self-signed: no CA vouches for it."""
        return self.folder / "stranger.pem"

    @property
    def stranger_key(self) -> Path:
        return self.folder / "stranger.key"

    @property
    def other_server_cert(self) -> Path:
        """A second server certificate for the same key, with another serial (rotation)."""
        return self.folder / "server2.pem"


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], check=False, cwd=cwd, capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def make_tls_files(folder: Path) -> TlsFiles:
    """Write a CA, a server certificate and key, a client pair and a self-signed stranger."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        openssl(*args, cwd=folder)

    run("req", "-x509", *_EC_KEY, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=guestload test CA")  # fmt: skip
    for name, subject, extension in (
        ("server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ("client", "/CN=scraper", "subjectAltName=DNS:scraper.example"),
    ):
        run("req", *_EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        (folder / f"{name}.ext").write_text(extension + "\n")
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        )  # fmt: skip
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server2.pem", "-days", "2", "-extfile", "server.ext",
    )  # fmt: skip
    run(
        "req", "-x509", *_EC_KEY, "-keyout", "stranger.key", "-out", "stranger.pem",
        "-days", "2", "-subj", "/CN=stranger", "-addext", "subjectAltName=DNS:scraper.example",
    )  # fmt: skip
    return TlsFiles(folder=folder)
