"""Bearer-token authentication and TLS credentials of the server.

Tokens come from ``--auth-token-file`` (one per line, so a new token can be added before
the old one is removed) or ``JACSERVE_AUTH_TOKEN``. Every RPC but the health check must
carry ``authorization: Bearer <token>``; tokens are compared in constant time.

>>> interceptor = TokenAuthInterceptor(["s3cret"])
>>> interceptor.accepts("Bearer s3cret"), interceptor.accepts("Bearer guess")
(True, False)
"""

from __future__ import annotations

import hmac
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc

from jacserve.server.errors import Reason, Unauthenticated
from jacserve.server.rpc import abort_with_details

__all__ = ["TokenAuthInterceptor", "load_tokens", "server_credentials"]

_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def load_tokens(token_file: str | None, environ: Mapping[str, str]) -> list[str]:
    """The accepted tokens: the file's non-empty lines, plus ``JACSERVE_AUTH_TOKEN``.

    >>> load_tokens(None, {"JACSERVE_AUTH_TOKEN": " t1 "})
    ['t1']
    """
    tokens = []
    if token_file:
        tokens += [line.strip() for line in pathlib.Path(token_file).read_text().splitlines()]
    tokens.append(environ.get("JACSERVE_AUTH_TOKEN", "").strip())
    return [t for t in tokens if t and not t.startswith("#")]


def server_credentials(
    cert_file: str, key_file: str, client_ca_file: str | None
) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with ``client_ca_file``, clients must present a
    certificate signed by that CA (mutual TLS)."""
    key, chain = pathlib.Path(key_file).read_bytes(), pathlib.Path(cert_file).read_bytes()
    ca = pathlib.Path(client_ca_file).read_bytes() if client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca, require_client_auth=ca is not None
    )


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuse calls without an accepted bearer token with UNAUTHENTICATED.

    Args:
        tokens: the accepted tokens (at least one).
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens]
        if not self._tokens:
            raise ValueError("token authentication needs at least one token")

    def accepts(self, header: str) -> bool:
        """Whether an ``authorization`` header value carries an accepted token."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = token.strip().encode()
        matched = False
        for accepted in self._tokens:  # no early exit: the time does not depend on which
            matched |= hmac.compare_digest(given, accepted)
        return matched

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method.startswith(_OPEN_PREFIXES):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        if self.accepts(str(metadata.get("authorization", ""))):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return _refusal(handler, "missing" if "authorization" not in metadata else "wrong")


def _refusal(handler: grpc.RpcMethodHandler, what: str) -> grpc.RpcMethodHandler:
    message = (
        f"{what} bearer token: send metadata 'authorization: Bearer <token>' "
        "(Client(target, token=...) or JACSERVE_TOKEN for the CLI)"
    )

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        error = Unauthenticated(message, reason=Reason.UNAUTHENTICATED)
        abort_with_details(context, grpc.StatusCode.UNAUTHENTICATED, message, error)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
