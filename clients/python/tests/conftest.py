"""Test fixtures: the client code freshly generated from proto/, and a real
sync-service (the repository's `clerk-sync-service` binary, built with cargo)
on a free port over a temporary SQLite database.

Set CLERK_SYNC_SERVICE_BIN to use an already built binary instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CLIENT_ROOT = HERE.parent
REPO_ROOT = CLIENT_ROOT.parent.parent

# Generated at test time from the current proto/, never committed.
sys.path.insert(0, str(CLIENT_ROOT))
import generate  # noqa: E402

generate.generate()


def _service_binary() -> Path:
    configured = os.environ.get("CLERK_SYNC_SERVICE_BIN")
    if configured:
        return Path(configured)
    subprocess.run(
        ["cargo", "build", "--quiet", "--locked", "-p", "clerk-sync-service", "--bin", "clerk-sync-service"],
        cwd=REPO_ROOT,
        check=True,
    )
    metadata = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(json.loads(metadata.stdout)["target_directory"]) / "debug" / "clerk-sync-service"


@pytest.fixture(scope="session")
def service_binary() -> Path:
    return _service_binary()


class SyncService:
    """A running sync-service process and where it listens."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite://{workdir / 'clerk-sync.db'}?mode=rwc",
            # Port 0: the system picks a free port; the service logs it.
            "SYNC_SERVICE_LISTEN_ADDR": "127.0.0.1:0",
            "SYNC_SERVICE_METRICS_LISTEN_ADDR": "",
            "LOG_FORMAT": "json",
            "RUST_LOG": "info",
            **(extra_env or {}),
        }
        self.process = subprocess.Popen(
            [str(binary), *args], cwd=workdir, env=env, stderr=subprocess.PIPE, text=True
        )
        self.logs: list[str] = []
        self.address = self._wait_for_listening()
        # Keep draining the logs so the service never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_for_listening(self) -> str:
        for line in self.process.stderr:
            self.logs.append(line)
            record = json.loads(line)
            if record["fields"].get("message") == "sync-service listening":
                return record["fields"]["address"]
        raise RuntimeError("sync-service exited before listening:\n" + "".join(self.logs))

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.logs.append(line)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def sync_service(service_binary: Path, tmp_path: Path):
    service = SyncService(service_binary, tmp_path)
    try:
        yield service
    finally:
        if service.process.poll() is None:
            assert service.stop() == 0, "".join(service.logs)


WRITE_TOKEN = "py-write-token-0123456789abcdef"
READ_TOKEN = "py-read-token-0123456789abcdef"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_files(tmp_path: Path) -> Path:
    """A private CA and a server certificate for 127.0.0.1, made with openssl."""
    tls = tmp_path / "tls"
    tls.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
             "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=tls)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=sync.test",
             "-keyout", "server-key.pem", "-out", "server.csr", cwd=tls)
    (tls / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
             "-CAcreateserial", "-days", "1", "-extfile", "server.ext", "-out", "server.pem", cwd=tls)
    return tls


@pytest.fixture
def secure_sync_service(service_binary: Path, tmp_path: Path, tls_files: Path):
    """The sync-service with TLS on its gRPC port and bearer tokens required."""
    service = SyncService(
        service_binary,
        tmp_path,
        args=("--tls-cert", str(tls_files / "server.pem"), "--tls-key", str(tls_files / "server-key.pem")),
        extra_env={"SYNC_SERVICE_WRITE_TOKENS": WRITE_TOKEN, "SYNC_SERVICE_READ_TOKENS": READ_TOKEN},
    )
    try:
        yield service
    finally:
        if service.process.poll() is None:
            assert service.stop() == 0, "".join(service.logs)
