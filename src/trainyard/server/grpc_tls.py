"""TLS for the worker gRPC service, from the TRAINYARD_GRPC_TLS_* settings."""

from __future__ import annotations

import grpc

from trainyard.server.settings import Settings


def server_credentials(s: Settings) -> grpc.ServerCredentials | None:
    """None for plaintext. With a client CA set, the handshake itself refuses a worker without a
    certificate that CA signed: an unauthenticated peer never reaches a handler."""
    if s.grpc_tls_cert is None and s.grpc_tls_key is None:
        if s.grpc_tls_client_ca is not None:
            raise ValueError("TRAINYARD_GRPC_TLS_CLIENT_CA needs TRAINYARD_GRPC_TLS_CERT and _KEY")
        return None
    if s.grpc_tls_cert is None or s.grpc_tls_key is None:
        raise ValueError("set both TRAINYARD_GRPC_TLS_CERT and TRAINYARD_GRPC_TLS_KEY")
    chain = s.grpc_tls_cert.read_bytes()
    key = s.grpc_tls_key.read_bytes()
    client_ca = s.grpc_tls_client_ca.read_bytes() if s.grpc_tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
