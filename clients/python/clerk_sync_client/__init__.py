"""Python client of the clerk-sync user directory.

The messages and stubs are generated from the repository's proto/ by
``generate.py`` into the ``clerk.sync.v1`` package (never committed); this
module only adds what every caller needs around them: a channel to the
sync-service with the deployment's TLS and bearer-token settings.

    from clerk_sync_client import connect, directory_pb2, directory_pb2_grpc

    with connect("127.0.0.1:50051", token=os.environ.get("CLERK_SYNC_TOKEN")) as channel:
        directory = directory_pb2_grpc.UserDirectoryServiceStub(channel)
        user = directory.GetUser(directory_pb2.GetUserRequest(id="user_123")).user
"""

from __future__ import annotations

import collections
from pathlib import Path

import grpc

try:
    from clerk.sync.v1 import (
        directory_pb2,
        directory_pb2_grpc,
        organization_pb2,
        organization_pb2_grpc,
        sync_pb2,
        sync_pb2_grpc,
        user_pb2,
    )
except ImportError as error:  # pragma: no cover - a setup mistake, said plainly
    raise ImportError(
        "the generated clerk.sync.v1 code is missing: run `python generate.py` "
        "in clients/python first (needs grpcio-tools)"
    ) from error

__all__ = [
    "BearerToken",
    "connect",
    "directory_pb2",
    "directory_pb2_grpc",
    "organization_pb2",
    "organization_pb2_grpc",
    "sync_pb2",
    "sync_pb2_grpc",
    "user_pb2",
]


def connect(
    address: str,
    *,
    token: str | None = None,
    ca_file: str | Path | None = None,
) -> grpc.Channel:
    """A channel to the sync-service at ``address`` (``host:port``).

    ``ca_file``: PEM file of the CA that signed the server's certificate; when
    given, the channel uses TLS, otherwise plaintext (local development).
    ``token``: bearer token sent as ``authorization: Bearer …`` on every call
    (the read role is enough for ``UserDirectoryService``).
    """
    if ca_file is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
        channel = grpc.secure_channel(address, credentials)
    else:
        channel = grpc.insecure_channel(address)
    if token:
        channel = grpc.intercept_channel(channel, BearerToken(token))
    return channel


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """Call details with replaced metadata (grpc's own class is abstract)."""


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call.

    Metadata rather than ``grpc.access_token_call_credentials``: those are
    only sent over TLS, and a token must also work against a plaintext
    sync-service on a developer's loopback.
    """

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:  # never show the token
        return "BearerToken(<redacted>)"

    def _with_token(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)
