"""Bearer-token authentication, TLS and mutual TLS on the collector's receivers, end to end.

A real :class:`Collector` runs in this process with ``receivers.otlp.auth`` and ``tls`` set,
on free ports; certificates (a CA, the server's, a client's) are made here with the
``openssl`` CLI. Senders are the OpenTelemetry Python exporters in a child process,
configured only through the standard ``OTEL_EXPORTER_OTLP_*`` variables, and ``httpx`` for
``/v1/labels``.
"""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.rpc.status_pb2 import Status

from modeltel_collector.collector import Collector
from modeltel_collector.config import ConfigError, parse_config
from tests.conftest import telemetry_env
from tests.otlp_sink import free_port, wait_until

TOKEN = "s3cr3t-token-Zq8x"
FILE_TOKEN = "file-token-Wm4v"

SENDER = """
import json
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
import os

if os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
else:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

span = TracerProvider().get_tracer("security-test").start_span("request")
span.end()
reader = InMemoryMetricReader()
MeterProvider(metric_readers=[reader]).get_meter("security-test").create_counter("requests").add(1)
logs = InMemoryLogExporter()
logger_provider = LoggerProvider()
logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
logger_provider.get_logger("security-test").emit(body="hello")
results = {
    "traces": OTLPSpanExporter().export([span]).name,
    "metrics": OTLPMetricExporter().export(reader.get_metrics_data()).name,
    "logs": OTLPLogExporter().export(list(logs.get_finished_logs())).name,
}
print(json.dumps(results))
"""


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def _leaf(directory: Path, name: str, extensions: str) -> None:
    """``{name}.pem`` and ``{name}.key``, an EC P-256 certificate signed by ``ca.pem``."""
    (directory / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\n"
        f"authorityKeyIdentifier=keyid,issuer\n{extensions}\n"
    )
    _openssl(
        directory,
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        directory,
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    _openssl(
        directory,
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=modeltel test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _leaf(
        directory,
        "server",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature",
    )
    _leaf(directory, "client", "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature")
    return Pki(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "client.pem",
        directory / "client.key",
    )


@dataclass
class Running:
    collector: Collector
    grpc_port: int
    http_port: int


def _start(tmp_path: Path, pki: Pki, mutual: bool) -> Running:
    token_file = tmp_path / "tokens.txt"
    token_file.write_text(f"# tokens for the test\n\n{FILE_TOKEN}\n")
    grpc_port, http_port = free_port(), free_port()
    tls: dict[str, Any] = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    if mutual:
        tls["client_ca_file"] = str(pki.ca)
    config = parse_config(
        {
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                        "http": {"endpoint": f"127.0.0.1:{http_port}"},
                    },
                    "auth": {"bearer_tokens": [TOKEN], "bearer_token_file": str(token_file)},
                    "tls": tls,
                }
            },
            "exporters": {"prometheus": None},
            "data_dir": str(tmp_path / "data"),
        }
    )
    collector = Collector(config).start()
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(pki.client_cert, pki.client_key)

    def http_up() -> bool:
        try:
            httpx.post(f"https://localhost:{http_port}/v1/labels", verify=context, timeout=1)
        except httpx.TransportError:
            return False
        return True

    wait_until(http_up, timeout=10, what="the HTTPS receiver")
    return Running(collector, grpc_port, http_port)


@pytest.fixture
def tls_collector(tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> Iterator[Running]:
    caplog.set_level(logging.DEBUG)
    running = _start(tmp_path, pki, mutual=False)
    yield running
    running.collector.stop()


@pytest.fixture
def mtls_collector(tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> Iterator[Running]:
    caplog.set_level(logging.DEBUG)
    running = _start(tmp_path, pki, mutual=True)
    yield running
    running.collector.stop()


def _send(endpoint: str, protocol: str, **extra: str) -> tuple[dict[str, str], str]:
    """Export one span, one metric and one log record with the real exporters, configured by
    ``OTEL_*`` variables only; the three results and the child's stderr."""
    env = telemetry_env(endpoint, protocol, **extra)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests lets these override the CA given
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", SENDER], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _endpoint(running: Running, protocol: str) -> str:
    port = running.grpc_port if protocol == "grpc" else running.http_port
    return f"https://localhost:{port}"


def _bearer(token: str) -> str:
    return f"authorization=Bearer%20{token}"


ALL_FAILED = {"traces": "FAILURE", "metrics": "FAILURE", "logs": "FAILURE"}


def _success(results: dict[str, str]) -> bool:
    return set(results.values()) == {"SUCCESS"}


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_tls_and_token_accepted_refused_otherwise(
    tls_collector: Running, pki: Pki, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Over TLS, all three signals are accepted with either token (inline or from the file),
    refused UNAUTHENTICATED / 401 with a wrong one or none; no token reaches the log."""
    endpoint = _endpoint(tls_collector, protocol)
    ca = {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca)}
    for token in (TOKEN, FILE_TOKEN):
        results, stderr = _send(endpoint, protocol, OTEL_EXPORTER_OTLP_HEADERS=_bearer(token), **ca)
        assert _success(results), (results, stderr)
    refusal = "UNAUTHENTICATED" if protocol == "grpc" else "401"
    for headers in (_bearer("wrong-token"), _bearer(TOKEN + "x"), ""):
        results, stderr = _send(endpoint, protocol, OTEL_EXPORTER_OTLP_HEADERS=headers, **ca)
        assert results == ALL_FAILED, (results, stderr)
        assert refusal in stderr, stderr
        assert "wrong-token" not in stderr
    # without the CA the client does not trust the server: nothing is sent
    results, _ = _send(endpoint, protocol, OTEL_EXPORTER_OTLP_HEADERS=_bearer(TOKEN))
    assert results == ALL_FAILED
    _assert_no_secret_logged(caplog)


def test_grpc_refusal_status_and_message(tls_collector: Running, pki: Pki) -> None:
    """The gRPC refusal is UNAUTHENTICATED with a message saying what to send, on each service."""
    import grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with grpc.secure_channel(f"localhost:{tls_collector.grpc_port}", credentials) as channel:
        for service in ("logs.v1.LogsService", "trace.v1.TraceService", "metrics.v1.MetricsService"):
            export = channel.unary_unary(f"/opentelemetry.proto.collector.{service}/Export")
            for metadata, message in (
                ((), "missing bearer token"),
                ((("authorization", "Bearer nope"),), "not accepted"),
                ((("authorization", f"Basic {TOKEN}"),), "missing bearer token"),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    export(b"", metadata=metadata, timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert message in refused.value.details()
            assert export(b"", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=5) == b""


def test_http_refusal_is_401_with_status_body(tls_collector: Running, pki: Pki) -> None:
    """401 with ``WWW-Authenticate: Bearer`` and a ``google.rpc.Status`` (protobuf or JSON, as
    the request) on the OTLP paths and ``/v1/labels``, before the body is looked at."""
    base = f"https://localhost:{tls_collector.http_port}"
    context = ssl.create_default_context(cafile=str(pki.ca))
    with httpx.Client(base_url=base, verify=context, timeout=5) as client:
        refused = client.post(
            "/v1/traces", content=b"\xff garbage", headers={"content-type": "application/x-protobuf"}
        )
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        status = Status.FromString(refused.content)
        assert status.code == 16 and "missing bearer token" in status.message  # UNAUTHENTICATED
        for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": TOKEN}):
            refused = client.post("/v1/labels", json=[], headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["code"] == 16
        labels = [{"model": "m", "prediction_id": "p1", "value": 1.0}]
        for token in (TOKEN, FILE_TOKEN):
            accepted = client.post("/v1/labels", json=labels, headers={"authorization": f"bearer {token}"})
            assert accepted.status_code == 200, accepted.text
            assert accepted.json()["rejected"] + accepted.json()["accepted"] == 1
    with pytest.raises(httpx.TransportError):  # plain HTTP is not served
        httpx.post(f"http://localhost:{tls_collector.http_port}/v1/labels", json=[], timeout=5)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_mutual_tls_requires_a_client_certificate(
    mtls_collector: Running, pki: Pki, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Under mTLS: with the client certificate and the token, accepted; without the certificate,
    refused even with the token; with the certificate but no token, still UNAUTHENTICATED / 401."""
    endpoint = _endpoint(mtls_collector, protocol)
    ca = {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca)}
    client = {
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(pki.client_cert),
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pki.client_key),
    }
    results, stderr = _send(endpoint, protocol, OTEL_EXPORTER_OTLP_HEADERS=_bearer(TOKEN), **ca, **client)
    assert _success(results), (results, stderr)
    results, stderr = _send(endpoint, protocol, OTEL_EXPORTER_OTLP_HEADERS=_bearer(TOKEN), **ca)
    assert results == ALL_FAILED, (results, stderr)
    results, stderr = _send(endpoint, protocol, **ca, **client)
    assert results == ALL_FAILED, (results, stderr)
    assert ("UNAUTHENTICATED" if protocol == "grpc" else "401") in stderr
    _assert_no_secret_logged(caplog)


def test_mutual_tls_labels(mtls_collector: Running, pki: Pki) -> None:
    """``/v1/labels`` under mTLS: the handshake fails without a client certificate."""
    url = f"https://localhost:{mtls_collector.http_port}/v1/labels"
    bare = ssl.create_default_context(cafile=str(pki.ca))
    with pytest.raises(httpx.TransportError):
        httpx.post(url, json=[], headers={"authorization": f"Bearer {TOKEN}"}, verify=bare, timeout=5)
    with_cert = ssl.create_default_context(cafile=str(pki.ca))
    with_cert.load_cert_chain(pki.client_cert, pki.client_key)
    answer = httpx.post(
        url, json=[], headers={"authorization": f"Bearer {TOKEN}"}, verify=with_cert, timeout=5
    )
    assert answer.status_code == 200, answer.text


def _assert_no_secret_logged(caplog: pytest.LogCaptureFixture) -> None:
    text = "\n".join(
        record.getMessage() + (str(record.exc_info) if record.exc_info else "") for record in caplog.records
    )
    assert TOKEN not in text and FILE_TOKEN not in text
    assert TOKEN not in caplog.text and FILE_TOKEN not in caplog.text


def _security_config(tmp_path: Path, **otlp: Any) -> Any:
    return parse_config(
        {
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": f"127.0.0.1:{free_port()}"},
                        "http": {"endpoint": f"127.0.0.1:{free_port()}"},
                    },
                    **otlp,
                }
            },
            "exporters": {"prometheus": None},
            "data_dir": str(tmp_path / "data"),
        }
    )


@pytest.mark.parametrize(
    ("otlp", "key"),
    [
        ({"auth": {"bearer_token_file": "missing-tokens.txt"}}, "receivers.otlp.auth.bearer_token_file"),
        ({"auth": {}}, "receivers.otlp.auth: no bearer token"),
        ({"tls": {"cert_file": "missing.pem", "key_file": "missing.key"}}, "receivers.otlp.tls.cert_file"),
        ({"tls": {"cert_file": "CERT", "key_file": "missing.key"}}, "receivers.otlp.tls.key_file"),
        (
            {"tls": {"cert_file": "CERT", "key_file": "KEY", "client_ca_file": "nope.pem"}},
            "receivers.otlp.tls.client_ca_file",
        ),
        ({"tls": {"cert_file": "KEY", "key_file": "CERT"}}, "receivers.otlp.tls.cert_file/key_file"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, pki: Pki, otlp: dict[str, Any], key: str) -> None:
    """A missing or unusable token or certificate file is refused at start, naming the key."""
    files = {"CERT": str(pki.server_cert), "KEY": str(pki.server_key)}
    if "tls" in otlp:
        otlp = {"tls": {name: files.get(value, str(tmp_path / value)) for name, value in otlp["tls"].items()}}
    elif "bearer_token_file" in otlp["auth"]:
        otlp = {"auth": {"bearer_token_file": str(tmp_path / otlp["auth"]["bearer_token_file"])}}
    collector = Collector(_security_config(tmp_path, **otlp))
    try:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            collector.start()
    finally:
        collector.stop()


def test_token_file_is_read_on_start_and_tokens_not_recorded(tmp_path: Path) -> None:
    """The token file is read when the collector starts; the configuration as recorded (and any
    validation error) never shows a token."""
    token_file = tmp_path / "tokens"
    token_file.write_text("first-token\n")
    config = _security_config(tmp_path, auth={"bearer_tokens": [TOKEN], "bearer_token_file": str(token_file)})
    assert TOKEN not in json.dumps(config.model_dump(mode="json"))
    assert TOKEN not in repr(config)
    collector = Collector(config)
    token_file.write_text("second-token\n")
    collector.start()
    try:
        port = int(config.receivers.otlp.protocols.http.endpoint.rpartition(":")[2])  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}/v1/labels"
        wait_until(lambda: _reachable(url), timeout=10, what="the HTTP receiver")
        assert httpx.post(url, json=[], headers={"authorization": "Bearer second-token"}).status_code == 200
        assert httpx.post(url, json=[], headers={"authorization": "Bearer first-token"}).status_code == 401
        assert httpx.post(url, json=[], headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    finally:
        collector.stop()
    with pytest.raises(ConfigError) as invalid:
        parse_config({"receivers": {"otlp": {"auth": {"bearer_tokens": [12345678]}}}})
    assert "12345678" not in str(invalid.value)


def _reachable(url: str) -> bool:
    try:
        httpx.post(url, json=[], timeout=1)
    except httpx.TransportError:
        return False
    return True
