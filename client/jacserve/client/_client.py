"""The synchronous jacserve client.

:class:`Client` is assembled from one module per job: ``_connection`` (settings, channels,
replicas; shared with :class:`~jacserve.client.AsyncClient`), ``_client_transport`` (a
call with retries, the model uploaded on demand, streamed responses), ``_client_models``
(upload, get, list, delete), ``_client_derivatives`` (JVP, VJP, Jacobian, gradients) and
``_client_second_order`` (Hessians, sensitivities, singular values).
"""

from __future__ import annotations

from jacserve.client._client_derivatives import DerivativeCalls
from jacserve.client._client_models import ModelCalls
from jacserve.client._client_parameters import ParameterCalls
from jacserve.client._client_second_order import SecondOrderCalls
from jacserve.client._client_uncertainty import UncertaintyCalls
from jacserve.client._connection import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TARGET

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_TARGET", "Client"]


# Bases last-first: the API reference lists inherited methods in reverse MRO order, so
# models, then derivatives, then second order (as the sections read).
class Client(ParameterCalls, UncertaintyCalls, SecondOrderCalls, DerivativeCalls, ModelCalls):
    """A connection to a jacserve server.

    Args:
        target: ``host:port`` of the server.
        timeout: default deadline of each call in seconds; ``None`` waits indefinitely.
        max_message_bytes: largest message sent or received; match the server's
            ``--max-message-bytes``.
        metadata: extra gRPC metadata sent with every call (each method's ``metadata=``
            adds to it for that call).
        retry: when to try a failed call again (default: up to 5 tries with exponential
            backoff on UNAVAILABLE and a busy server; ``RetryPolicy.off()`` disables).
        token: bearer token for a server started with ``--auth-token-file`` or
            ``JACSERVE_AUTH_TOKEN`` (sent as ``authorization: Bearer <token>``).
        tls: connect with TLS using the system's root certificates.
        root_certificates: PEM CA bundle that signed the server's certificate (implies TLS).
        private_key: PEM key of this client, for a server that requires mutual TLS.
        certificate_chain: PEM certificate of this client, for mutual TLS.
        compression: a ``grpc.Compression`` for every call (each method's
            ``compression=`` overrides it for that call).
        channel_options: gRPC channel arguments, e.g. ``[("grpc.primary_user_agent",
            "me/1")]``; one named like a default (message limits, keepalive) replaces it.

    Arrays: pass torch tensors and get torch tensors back; pass NumPy arrays (or Python
    numbers) in a process that has not imported torch and get NumPy arrays back, without
    torch installed (models then come as archive bytes or paths; bfloat16 results need
    torch).

    Every method raises a :class:`~jacserve.client.errors.JacserveError` subclass on
    failure. Use as a context manager, or call :meth:`close`.

    >>> with Client(target, timeout=30) as c:  # target: "host:port", e.g. "127.0.0.1:50051"
    ...     linear = torch.jit.script(torch.nn.Linear(3, 2))
    ...     c.jacobian(linear, torch.randn(3)).jacobian.shape
    torch.Size([2, 3])
    """

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels; the client cannot be used afterwards."""
        for channel in self._channels:
            channel.close()
