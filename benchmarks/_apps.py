"""What the SDK benchmarks share: child processes of the example app and their HTTP load."""

from __future__ import annotations

import contextlib
import os
import socket
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def base_env() -> dict[str, str]:
    """This environment minus ``OTEL_*`` and ``BENCH_*`` settings, with the checkout (and this
    folder, for the benchmarks' own modules) importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BENCH_"))}
    path = [str(ROOT), str(ROOT / "benchmarks"), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serves(port: int) -> bool:
    """Whether an app answers ``GET /health`` with 200 on ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def request_bytes(port: int, body: bytes) -> bytes:
    """A keep-alive ``POST /predict`` with a JSON ``body``, as raw HTTP/1.1."""
    head = (
        f"POST /predict HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def versions(*packages: str) -> dict[str, str]:
    """The installed version of each of ``packages`` (those installed)."""
    out = {}
    for name in packages:
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out
