"""``modeltel labels import`` against a collector with bearer tokens, TLS and mutual TLS.

A real :class:`Collector` (started as in ``test_security``, with its certificates made by the
``openssl`` CLI) serves ``/v1/labels`` over HTTPS and requires a token; ``modeltel labels
import`` runs as a subprocess on a small CSV, configured by the standard
``OTEL_EXPORTER_OTLP_*`` variables or by its own options. Accepted labels are read back from
the collector's audit log (written by its pipeline), and no token may appear in the
command's output.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.collector import test_security
from tests.collector.test_security import (
    FILE_TOKEN,
    TOKEN,
    Pki,
    Running,
    _assert_no_secret_logged,
    _start,
)
from tests.conftest import ROOT

pki = test_security.pki
"""The module-scoped certificates (a CA, the server's, a client's) of ``test_security``."""

IDS = ["pred-1", "pred-2", "pred-3"]
WRONG_TOKEN = "wr0ng-token-Kp2y"


@dataclass
class Secured:
    """A running secured collector, stopped once (by the test, to read its audit log, or at teardown)."""

    running: Running
    data_dir: Path
    stopped: bool = False

    @property
    def endpoint(self) -> str:
        return f"https://localhost:{self.running.http_port}"

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.running.collector.stop()

    def audited_labels(self) -> list[str]:
        """The prediction ids of the labels the pipeline took (its audit log, flushed on stop)."""
        self.stop()
        ids: list[str] = []
        for path in sorted((self.data_dir / "audit" / "labels").rglob("*.parquet")):
            ids += pq.read_table(path, columns=["prediction_id"]).column(0).to_pylist()
        return sorted(ids)


def _secured(tmp_path: Path, pki: Pki, mutual: bool, caplog: pytest.LogCaptureFixture) -> Iterator[Secured]:
    caplog.set_level(logging.DEBUG)
    secured = Secured(_start(tmp_path, pki, mutual=mutual), tmp_path / "data")
    try:
        yield secured
    finally:
        secured.stop()
    _assert_no_secret_logged(caplog)
    assert WRONG_TOKEN not in caplog.text


@pytest.fixture
def tls(tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> Iterator[Secured]:
    yield from _secured(tmp_path, pki, False, caplog)


@pytest.fixture
def mtls(tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> Iterator[Secured]:
    yield from _secured(tmp_path, pki, True, caplog)


@pytest.fixture
def labels_csv(tmp_path: Path) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text("prediction_id,label\n" + "".join(f"{pid},{i}.5\n" for i, pid in enumerate(IDS)))
    return path


def _token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / f"token-{token[:5]}"
    path.write_text(f"{token}\nsecond line ignored\n")
    return path


def _import(csv: Path, endpoint: str, *options: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """``modeltel labels import`` in a child process, with only the given ``OTEL_*`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        env.pop(name, None)
    env.update(variables, PYTHONPATH=str(ROOT), COLUMNS="200")
    command = [sys.executable, "-m", "modeltel_collector.cli", "labels", "import", str(csv),
               "--endpoint", endpoint, "--model", "m", *options]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _assert_no_token(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    for secret in (TOKEN, FILE_TOKEN, WRONG_TOKEN):
        assert secret not in output, output


def _accepted(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert f"{len(IDS)} rows read, {len(IDS)} accepted, 0 rejected" in result.stdout, result.stdout
    _assert_no_token(result)


def _bearer(token: str) -> str:
    return f"authorization=Bearer%20{token}"


def test_token_and_ca_from_the_otel_variables(tls: Secured, pki: Pki, labels_csv: Path) -> None:
    """The exporters' variables alone (URL-encoded header, CA) are enough; the labels reach the
    pipeline (its audit log) and the token is not printed."""
    result = _import(
        labels_csv,
        tls.endpoint,
        OTEL_EXPORTER_OTLP_HEADERS=f"x-team=ml, {_bearer(TOKEN)}",
        OTEL_EXPORTER_OTLP_CERTIFICATE=str(pki.ca),
    )
    _accepted(result)
    assert tls.audited_labels() == IDS


def test_options_win_over_the_variables(
    tls: Secured,
    pki: Pki,
    labels_csv: Path,
    tmp_path: Path,
) -> None:
    """--token-file and --ca-file (or --header) replace a wrong token and a wrong CA in the variables."""
    wrong = {
        "OTEL_EXPORTER_OTLP_HEADERS": _bearer(WRONG_TOKEN),
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.client_cert),  # not the CA: would not verify
    }
    token_file = _token_file(tmp_path, FILE_TOKEN)
    _accepted(
        _import(labels_csv, tls.endpoint, "--token-file", str(token_file), "--ca-file", str(pki.ca), **wrong)
    )
    header = f"authorization=Bearer {TOKEN}"
    _accepted(_import(labels_csv, tls.endpoint, "--header", header, "--ca-file", str(pki.ca), **wrong))
    # Both were accepted; the second import sent the same bodies again: a retry, applied once.
    assert tls.audited_labels() == sorted(IDS)


def test_missing_or_wrong_token_is_a_clear_refusal(
    tls: Secured,
    pki: Pki,
    labels_csv: Path,
    tmp_path: Path,
) -> None:
    """401 fails at once (no retries) saying the token was refused, without showing it; no label is taken."""
    ca = {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca)}
    started = time.monotonic()
    result = _import(labels_csv, tls.endpoint, **ca)
    assert result.returncode == 1
    assert "the collector refused the token: none was sent (401 missing bearer token" in result.stderr
    assert "--token-file" in result.stderr
    for options, variables in (
        ((), {"OTEL_EXPORTER_OTLP_HEADERS": _bearer(WRONG_TOKEN)}),
        (("--token-file", str(_token_file(tmp_path, WRONG_TOKEN))), {}),
        (("--header", f"authorization=Bearer {WRONG_TOKEN}"), {}),
        (("--header", f"Authorization=Basic {TOKEN}"), {}),
    ):
        result = _import(labels_csv, tls.endpoint, *options, **ca, **variables)
        assert result.returncode == 1, result.stdout
        assert "the collector refused the token: 401" in result.stderr, result.stderr
        assert "rows read" not in result.stdout  # refused before the file is sent
        _assert_no_token(result)
    assert time.monotonic() - started < 60  # five refusals, no retry loop
    assert tls.audited_labels() == []


def test_tls_problems_are_named(tls: Secured, pki: Pki, labels_csv: Path, tmp_path: Path) -> None:
    """An untrusted server certificate, plain HTTP to the TLS port and bad option combinations
    are clear errors that do not show the token."""
    token = {"OTEL_EXPORTER_OTLP_HEADERS": _bearer(TOKEN)}
    result = _import(labels_csv, tls.endpoint, **token)  # no CA: the test CA is not trusted
    assert result.returncode == 1
    assert f"the TLS handshake with {tls.endpoint} failed" in result.stderr, result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    _assert_no_token(result)

    plain = tls.endpoint.replace("https://", "http://")
    result = _import(labels_csv, plain, **token)
    assert result.returncode == 1
    assert "use an https:// --endpoint" in result.stderr, result.stderr
    _assert_no_token(result)

    result = _import(labels_csv, plain, "--ca-file", str(pki.ca), **token)
    assert result.returncode == 1
    assert "--ca-file need an https:// --endpoint" in result.stderr, result.stderr

    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    result = _import(labels_csv, tls.endpoint, "--token-file", str(empty), "--ca-file", str(pki.ca))
    assert result.returncode == 1
    assert "--token-file: the first line of" in result.stderr

    both = ("--token-file", str(_token_file(tmp_path, TOKEN)), "--header", f"authorization=Bearer {TOKEN}")
    result = _import(labels_csv, tls.endpoint, *both, "--ca-file", str(pki.ca))
    assert result.returncode == 1
    assert "not both" in result.stderr
    _assert_no_token(result)
    assert tls.audited_labels() == []


def test_mutual_tls_with_variables_or_options(
    mtls: Secured,
    pki: Pki,
    labels_csv: Path,
    tmp_path: Path,
) -> None:
    """Under mTLS the client certificate from the variables or from the options gets the labels in;
    without it the handshake fails, clearly, even with the right token."""
    result = _import(
        labels_csv,
        mtls.endpoint,
        OTEL_EXPORTER_OTLP_HEADERS=_bearer(TOKEN),
        OTEL_EXPORTER_OTLP_CERTIFICATE=str(pki.ca),
        OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=str(pki.client_cert),
        OTEL_EXPORTER_OTLP_CLIENT_KEY=str(pki.client_key),
    )
    _accepted(result)
    token_file = _token_file(tmp_path, FILE_TOKEN)
    options = ("--token-file", str(token_file), "--ca-file", str(pki.ca))
    client = ("--client-cert", str(pki.client_cert), "--client-key", str(pki.client_key))
    _accepted(_import(labels_csv, mtls.endpoint, *options, *client))

    result = _import(labels_csv, mtls.endpoint, *options)
    assert result.returncode == 1
    assert f"the TLS handshake with {mtls.endpoint} failed" in result.stderr, result.stderr
    assert "--client-cert" in result.stderr
    _assert_no_token(result)

    result = _import(labels_csv, mtls.endpoint, "--ca-file", str(pki.ca), *client)  # certificate, no token
    assert result.returncode == 1
    assert "the collector refused the token: none was sent" in result.stderr
    assert mtls.audited_labels() == sorted(IDS)  # two imports of one file: the second is a retry
