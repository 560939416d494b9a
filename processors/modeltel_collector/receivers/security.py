"""Bearer-token authentication and TLS for the receivers (both transports).

Tokens are compared in constant time (:func:`hmac.compare_digest`) against every configured
token, and never logged: a refusal says only that the token is missing or not accepted.
gRPC checks the ``authorization`` metadata in a server interceptor (all three services);
HTTP checks the ``Authorization`` header in an ASGI middleware, before the body is read, for
every path (``/v1/labels`` included), answering 401 with ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from starlette.types import ASGIApp, Receive, Scope, Send

from modeltel_collector.receivers.errors import Unauthenticated, failure_for
from modeltel_collector.receivers.otlp_json import to_json

BEARER = "bearer"
MISSING = "missing bearer token: send the header 'authorization: Bearer <token>'"
REFUSED = "the bearer token is not accepted"


class SecurityConfigError(ValueError):
    """A token or certificate file named by the configuration cannot be used; names the key."""


@dataclass(frozen=True, repr=False)
class BearerTokens:
    """The accepted tokens (``repr`` shows only how many there are)."""

    tokens: tuple[bytes, ...]

    def __repr__(self) -> str:
        return f"BearerTokens(<{len(self.tokens)} tokens>)"

    def check(self, authorization: str | None) -> None:
        """Return if ``authorization`` (the header's value) carries an accepted token, else raise
        :class:`Unauthenticated`."""
        if not authorization:
            raise Unauthenticated(MISSING)
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != BEARER or not credentials.strip():
            raise Unauthenticated(MISSING)
        presented = credentials.strip().encode("utf-8", "surrogateescape")
        accepted = False
        for token in self.tokens:  # no early exit: the time does not tell which token matched
            accepted |= hmac.compare_digest(presented, token)
        if not accepted:
            raise Unauthenticated(REFUSED)


def load_bearer_tokens(
    tokens: Iterable[str], token_file: Path | None, key: str = "receivers.otlp.auth"
) -> BearerTokens:
    """The tokens given inline plus those in ``token_file`` (one per line; blank lines and
    ``#`` comments ignored), read now. :class:`SecurityConfigError` naming the key if the file
    cannot be read or no token is left."""
    accepted = [token.strip() for token in tokens if token.strip()]
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8")
        except OSError as error:
            raise SecurityConfigError(
                f"{key}.bearer_token_file: cannot read {token_file}: {error.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise SecurityConfigError(f"{key}.bearer_token_file: {token_file} is not UTF-8 text") from None
        accepted += [
            line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
        ]
    if not accepted:
        raise SecurityConfigError(
            f"{key}: no bearer token configured; give bearer_tokens or a non-empty bearer_token_file"
        )
    return BearerTokens(tuple(token.encode("utf-8") for token in accepted))


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key, and the CA that client certificates
    must chain to (mutual TLS, client certificates required) if given."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    key: str = "receivers.otlp.tls"

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """The three files' contents, checked to form a usable server TLS configuration."""
        cert = self._read("cert_file", self.cert_file)
        private_key = self._read("key_file", self.key_file)
        client_ca = self._read("client_ca_file", self.client_ca_file) if self.client_ca_file else None
        self.ssl_context()
        return cert, private_key, client_ca

    def _read(self, name: str, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as error:
            raise SecurityConfigError(f"{self.key}.{name}: cannot read {path}: {error.strerror}") from None

    def ssl_context(self) -> ssl.SSLContext:
        """A server context from the files; :class:`SecurityConfigError` naming the bad key."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError) as error:
            raise SecurityConfigError(
                f"{self.key}.cert_file/key_file: {self.cert_file} and {self.key_file} are not a "
                f"PEM certificate and its private key: {error}"
            ) from None
        if self.client_ca_file is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca_file)
            except (ssl.SSLError, OSError) as error:
                raise SecurityConfigError(
                    f"{self.key}.client_ca_file: {self.client_ca_file} is not a PEM CA certificate: {error}"
                ) from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        cert, private_key, client_ca = self.read()
        return grpc.ssl_server_credentials(
            [(private_key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )

    def uvicorn_options(self) -> dict[str, Any]:
        """``uvicorn.Config`` keyword arguments serving HTTPS (and requiring client certificates)."""
        self.read()
        options: dict[str, Any] = {"ssl_certfile": str(self.cert_file), "ssl_keyfile": str(self.key_file)}
        if self.client_ca_file is not None:
            options.update(ssl_ca_certs=str(self.client_ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED)
        return options


class BearerAuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses, with ``UNAUTHENTICATED``, every call without an accepted bearer token."""

    def __init__(self, tokens: BearerTokens) -> None:
        self._tokens = tokens

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        authorization = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else value.decode("latin-1")
                break
        try:
            self._tokens.check(authorization)
        except Unauthenticated as error:
            return _refusal(error)
        return continuation(handler_call_details)


def _refusal(error: Unauthenticated) -> grpc.RpcMethodHandler:
    from modeltel_collector.receivers.otlp_grpc import abort  # it imports this module

    failure = failure_for(error)

    def refuse(_request: bytes, context: grpc.ServicerContext) -> None:
        abort(context, failure)

    return grpc.unary_unary_rpc_method_handler(refuse)


class BearerAuthMiddleware:
    """ASGI middleware refusing HTTP requests without an accepted bearer token: 401,
    ``WWW-Authenticate: Bearer``, a ``google.rpc.Status`` body (protobuf if the request is
    protobuf, JSON otherwise)."""

    def __init__(self, app: ASGIApp, tokens: BearerTokens) -> None:
        self.app = app
        self._tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.lower(): value for key, value in scope["headers"]}
        authorization = headers.get(b"authorization")
        try:
            self._tokens.check(
                authorization.decode("utf-8", "surrogateescape") if authorization is not None else None
            )
        except Unauthenticated as error:
            failure = failure_for(error)
            media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            protobuf = media_type == b"application/x-protobuf"
            body = failure.status().SerializeToString() if protobuf else to_json(failure.status())
            await send(
                {
                    "type": "http.response.start",
                    "status": failure.http_status,
                    "headers": [
                        (b"content-type", b"application/x-protobuf" if protobuf else b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b"Bearer"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
