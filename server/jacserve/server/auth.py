"""Bearer-token authentication and TLS credentials of the server.

Tokens come from ``--auth-token-file`` (one per line, ``TENANT:TOKEN`` or a bare token of
tenant ``default``, so a new token can be added before the old one is removed) or
``JACSERVE_AUTH_TOKEN``. Every RPC but the health check must carry
``authorization: Bearer <token>``; tokens are compared in constant time
(:class:`~jacserve.server.tenants.TokenTable`).

>>> interceptor = TokenAuthInterceptor(TokenTable.parse(["team-a:s3cret"]))
>>> interceptor.accepts("Bearer s3cret"), interceptor.accepts("Bearer guess")
(True, False)
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from jacserve.server.errors import Reason, Unauthenticated
from jacserve.server.rpc import abort_with_details
from jacserve.server.tenants import TokenTable

__all__ = ["TokenAuthInterceptor", "load_tokens", "server_credentials"]

_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def load_tokens(token_file: str | None, environ: Mapping[str, str]) -> TokenTable | None:
    """The accepted tokens and their tenants: the file's lines, plus
    ``JACSERVE_AUTH_TOKEN`` (either may be ``TENANT:TOKEN``); ``None`` when there are none.

    >>> load_tokens(None, {"JACSERVE_AUTH_TOKEN": " t1 "}).tenant_of("Bearer t1")
    'default'
    >>> load_tokens(None, {}) is None
    True

    Raises:
        ValueError: a bad tenant name, or one token given to two tenants.
    """
    lines = pathlib.Path(token_file).read_text().splitlines() if token_file else []
    lines.append(environ.get("JACSERVE_AUTH_TOKEN", ""))
    if not any(line.strip() and not line.strip().startswith("#") for line in lines):
        return None
    return TokenTable.parse(lines)


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
        tokens: the accepted tokens and their tenants.
    """

    def __init__(self, tokens: TokenTable) -> None:
        self._tokens = tokens

    def accepts(self, header: str) -> bool:
        """Whether an ``authorization`` header value carries an accepted token."""
        return self._tokens.tenant_of(header) is not None

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
