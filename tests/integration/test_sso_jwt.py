"""Single sign-on: JWT bearer tokens verified against a JWKS that a local HTTP server publishes."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.harness import ControlPlane
from trainyard.server import sso
from trainyard.store.sql import SqlStore

ISSUER = "https://sso.test"
AUDIENCE = "trainyard"


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    pub = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": _b64(pub.n), "e": _b64(pub.e)}


class JwksServer:
    """Serves {"keys": [...]} at /jwks.json and counts the fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, str]] = []
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _token(key: rsa.RSAPrivateKey, kid: str, **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "alice",
        "team": "vision",
        "role": "user",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        **overrides,
    }
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.httpd.shutdown()


@pytest.fixture
def cp(tmp_path: Path, jwks: JwksServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    # A rotation is picked up at once here, not after the production rate limit on refetches.
    monkeypatch.setattr(sso, "JWKS_MIN_REFRESH_S", 0.2)
    plane = ControlPlane(
        tmp_path / "home", jwks_url=jwks.url, jwt_audience=AUDIENCE, jwt_issuer=ISSUER
    ).start()
    yield plane
    plane.stop()


def _get(cp: ControlPlane, token: str, path: str = "/v1/jobs") -> httpx.Response:
    return httpx.get(cp.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_a_valid_jwt_is_a_user_provisioned_on_first_sight(cp: ControlPlane, jwks: JwksServer) -> None:
    k1 = _key()
    jwks.keys = [_jwk(k1, "k1")]
    token = _token(k1, "k1")
    with cp.client(token) as alice:
        job = alice.post("/v1/jobs", json={"command": ["true"], "pool": "none-such"})
        assert job.status_code == 201, job.text
        assert (job.json()["user"], job.json()["team"]) == ("alice", "vision")
        assert alice.delete(f"/v1/jobs/{job.json()['id']}").status_code == 202
    with cp.client() as admin:
        entries = admin.get("/v1/admin/audit", params={"actor": "alice"}).json()["entries"]
        assert [e["action"] for e in entries] == ["job.cancel"]
        # Alice is a real user now: tokens can be managed for her like for anyone.
        assert admin.post("/v1/admin/tokens", json={"user": "alice"}).status_code == 201
        # Opaque platform tokens keep working next to SSO.
        assert admin.get("/v1/jobs").status_code == 200

    # Fresh tokens (no auth cache hit) reuse the cached key set.
    fetches = jwks.fetches
    for i in range(3):
        assert _get(cp, _token(k1, "k1", jti=str(i))).status_code == 200
    assert jwks.fetches == fetches

    # A viewer's claim is honoured: the role comes from the identity provider.
    viewer = _token(k1, "k1", sub="victor", role="viewer")
    r = httpx.post(
        cp.url + "/v1/jobs", json={"command": ["true"]}, headers={"Authorization": f"Bearer {viewer}"}
    )
    assert r.status_code == 403

    # Key rotation: a token with a kid the cache does not know triggers one refetch.
    k2 = _key()
    jwks.keys = [_jwk(k1, "k1"), _jwk(k2, "k2")]
    time.sleep(0.3)
    assert _get(cp, _token(k2, "k2", jti="rotated")).status_code == 200
    assert jwks.fetches == fetches + 1


def test_bad_jwts_are_401(cp: ControlPlane, jwks: JwksServer) -> None:
    k1, other = _key(), _key()
    jwks.keys = [_jwk(k1, "k1")]
    now = int(time.time())
    public_pem = k1.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bad = {
        "expired": _token(k1, "k1", iat=now - 900, exp=now - 600),
        "wrong audience": _token(k1, "k1", aud="someone-else"),
        "wrong issuer": _token(k1, "k1", iss="https://evil.test"),
        "bad signature": _token(other, "k1"),
        "unknown kid": _token(other, "nope"),
        "no exp": _token(k1, "k1", exp=None),
        "no team": _token(k1, "k1", team=None),
        "unknown role": _token(k1, "k1", role="root"),
        # The public key used as an HMAC secret: the classic algorithm-confusion forgery.
        "HS256 with the public key": jwt.encode(
            {"sub": "mallory", "team": "vision", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300},
            base64.b64encode(public_pem).decode(),
            algorithm="HS256",
            headers={"kid": "k1"},
        ),
        "tampered payload": _tamper(_token(k1, "k1", sub="bob")),
    }
    assert _get(cp, _token(k1, "k1")).status_code == 200  # the same setup accepts a good one
    for why, token in bad.items():
        r = _get(cp, token)
        assert r.status_code == 401, why
        assert r.json()["error"]["code"] == "unauthenticated", why
    # Refused tokens provision nobody.
    store = SqlStore(cp.settings.db_url)
    assert store.get_user("alice") is not None
    assert store.get_user("mallory") is None and store.get_user("bob") is None


def _tamper(token: str) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"
