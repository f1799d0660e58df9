"""Worker gRPC over mutual TLS, with a CA the test makes: a worker with a certificate that CA signed
registers and runs a job; one without a client certificate, with one from another CA, or in
plaintext is refused in the handshake."""

from __future__ import annotations

import datetime
import ipaddress
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.harness import Agent, ControlPlane, platform, wait_status
from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.proto.trainyard.v1 import worker_pb2_grpc as pbg
from trainyard.server.grpc_tls import server_credentials
from trainyard.server.settings import Settings


class CA:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            _builder(subject, subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, out: Path, name: str, *, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            _builder(subject, self.cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = out / f"{name}.crt", out / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )


def _register(target: str, creds: grpc.ChannelCredentials | None, token: str) -> grpc.StatusCode:
    """One Register call: OK, or the status a refused handshake gives (UNAVAILABLE)."""
    channel = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    with channel:
        stub = pbg.WorkerServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            stub.Register(
                # A capacity that fits no job: the probe must never be given the test's job.
                pb.RegisterRequest(name="probe", capacity=pb.Capacity(cpu=0.001, memory=1)),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=5,
            )
        except grpc.RpcError as e:
            return e.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK


def _worker_names(cp: ControlPlane) -> set[str]:
    with cp.client() as c:
        return {w["name"] for w in c.get("/v1/workers").json()["workers"]}


def test_mutual_tls_admits_only_workers_with_a_certificate_from_the_ca(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca, rogue = CA("trainyard-test-ca"), CA("rogue-ca")
    ca_pem = ca.write(pki / "ca.crt")
    server_cert, server_key = ca.issue(pki, "server", server=True)
    good_cert, good_key = ca.issue(pki, "worker-good", server=False)
    rogue_cert, rogue_key = rogue.issue(pki, "worker-rogue", server=False)
    tls = ("--tls-ca", str(ca_pem), "--tls-cert", str(good_cert), "--tls-key", str(good_key))

    with platform(
        tmp_path,
        agents=1,
        agent_args=tls,
        grpc_tls_cert=server_cert,
        grpc_tls_key=server_key,
        grpc_tls_client_ca=ca_pem,
    ) as (cp, _):
        with cp.client() as c:
            job = c.post("/v1/jobs", json={"command": ["sh", "-c", "echo over-mtls"]}).json()
            done = wait_status(c, job["id"], {"SUCCEEDED", "FAILED"}, timeout=60)
            assert done["status"] == "SUCCEEDED", done
            assert "over-mtls" in c.get(f"/v1/jobs/{job['id']}/logs").text

        token = (cp.home / "worker-token").read_text().strip()
        root = ca_pem.read_bytes()
        # The same probe with the CA's client certificate is answered, so the refusals below are the
        # handshake's doing, not a broken probe.
        good = grpc.ssl_channel_credentials(root, good_key.read_bytes(), good_cert.read_bytes())
        assert _register(cp.grpc, good, token) == grpc.StatusCode.OK
        no_cert = grpc.ssl_channel_credentials(root)
        other_ca = grpc.ssl_channel_credentials(root, rogue_key.read_bytes(), rogue_cert.read_bytes())
        for creds in (no_cert, other_ca, None):
            assert _register(cp.grpc, creds, token) == grpc.StatusCode.UNAVAILABLE

        # Real agents, refused the same way: they keep retrying and never register.
        refused = [
            Agent(cp, "no-cert", "--tls-ca", str(ca_pem)),
            Agent(
                cp,
                "rogue",
                "--tls-ca",
                str(ca_pem),
                "--tls-cert",
                str(rogue_cert),
                "--tls-key",
                str(rogue_key),
            ),
            Agent(cp, "plaintext"),
        ]
        try:
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                for a in refused:
                    assert a.proc.poll() is None, a.output()
                assert not {"no-cert", "rogue", "plaintext"} & _worker_names(cp)
                time.sleep(0.5)
        finally:
            for a in refused:
                a.stop()
        assert "probe" in _worker_names(cp) and "agent-1" in _worker_names(cp)


def test_half_configured_tls_is_refused_at_start(tmp_path: Path) -> None:
    ca_pem = CA("lonely-ca").write(tmp_path / "ca.crt")
    cert, key = CA("server-ca").issue(tmp_path, "server", server=True)
    with pytest.raises(ValueError, match="TRAINYARD_GRPC_TLS_CERT"):
        server_credentials(Settings(home=tmp_path, grpc_tls_client_ca=ca_pem))
    with pytest.raises(ValueError, match="both"):
        server_credentials(Settings(home=tmp_path, grpc_tls_cert=cert))
    assert server_credentials(Settings(home=tmp_path)) is None
    assert server_credentials(Settings(home=tmp_path, grpc_tls_cert=cert, grpc_tls_key=key)) is not None
