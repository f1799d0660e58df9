"""Issue 12, the REST API as a hostile caller sees it (findings 7 and 8).

One test per finding. Each fails on the code before the fix and names, in its docstring, the
defence that now stops it. Hostile JSON must be answered 400 or 422 with the usual error body,
never a 500 or a dropped connection: every request here is checked to leave its keep-alive
connection usable.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import stat
import struct
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.harness import ControlPlane
from trainyard.model.spec import JobSpec
from trainyard.server import safejson
from trainyard.server.bundles import BundleRefused, check_bundle
from trainyard.server.settings import Settings
from trainyard.store.sql import SqlStore

UNPACKED_LIMIT = "512Mi"  # the bundles' limit here (TRAINYARD_WORKDIR_UNPACKED_LIMIT's syntax)
FILE_LIMIT = 20

DEEP = b'{"command": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HUGE = "9" * 5000  # past Python's 4300-digit int conversion limit

# Every route that reads a JSON body, with a body it would accept apart from the hostile part.
BODY_ROUTES = [
    ("POST", "/v1/jobs"),
    ("PUT", "/v1/secrets/HF_TOKEN"),
    ("POST", "/v1/admin/tokens"),
    ("POST", "/v1/admin/users"),
    ("PUT", "/v1/admin/teams/alpha"),
    ("POST", "/v1/admin/workers/w-none/drain"),
]


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(
        tmp_path_factory.mktemp("hostile") / "home",
        workdir_unpacked_limit=UNPACKED_LIMIT,
        workdir_file_limit=FILE_LIMIT,
    ).start()
    with plane.client() as admin:
        for name, team, role in [
            ("tara", "alpha", "team-admin"),
            ("uma", "alpha", "user"),
            ("vera", "alpha", "viewer"),
            ("bob", "beta", "user"),
        ]:
            r = admin.post("/v1/admin/users", json={"name": name, "team": team, "role": role})
            assert r.status_code == 201, r.text
            (plane.home / f"token-{name}").write_text(r.json()["token"])
    yield plane
    plane.stop()


def token(cp: ControlPlane, name: str) -> str:
    return (cp.home / f"token-{name}").read_text()


class Conn:
    """One keep-alive HTTP connection: each answer must leave it open and usable."""

    def __init__(self, cp: ControlPlane, bearer: str | None = None) -> None:
        self.http = http.client.HTTPConnection("127.0.0.1", cp.port, timeout=60)
        self.auth = {"Authorization": f"Bearer {bearer or cp.token}"}

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        headers = {**self.auth, "Content-Type": "application/json"} if body is not None else self.auth
        self.http.request(method, path, body=body, headers=headers)
        r = self.http.getresponse()
        data = r.read()
        assert not r.will_close, f"{method} {path} closed the connection ({r.status})"
        sock = self.http.sock
        self.http.request("GET", "/healthz")
        ok = self.http.getresponse()
        ok.read()
        assert ok.status == 200 and self.http.sock is sock, f"{method} {path} left the connection unusable"
        return r.status, json.loads(data) if data else None

    def close(self) -> None:
        self.http.close()


def error_of(status: int, body: Any, *statuses: int) -> dict[str, Any]:
    assert status in statuses, (status, body)
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), body
    err: dict[str, Any] = body["error"]
    return err


def fields(err: dict[str, Any]) -> set[str]:
    return {d["field"] for d in err["details"]}


@pytest.fixture
def conn(cp: ControlPlane) -> Iterator[Conn]:
    c = Conn(cp)
    yield c
    c.close()


def test_json_nested_100000_deep_is_refused_on_every_body_route(conn: Conn) -> None:
    """Finding 7a: 100,000 nested arrays raised RecursionError in json.loads (a 500, and the
    connection dropped). Defence: safejson.loads, the one body reader of every route
    (errors.json_object), measures the nesting before parsing and refuses past 64 levels: 400."""
    for method, path in BODY_ROUTES:
        status, body = conn.call(method, path, DEEP)
        err = error_of(status, body, 400)
        assert err["code"] == "invalid_json" and "64 levels" in err["message"], (path, err)
    # Restart reads no body: a hostile one is ignored, still without a 500.
    status, body = conn.call("POST", "/v1/jobs/j-none/restart", DEEP)
    assert status == 404, body


def test_integer_of_5000_digits_is_refused_naming_the_field(conn: Conn) -> None:
    """Finding 7b: a 5,000-digit integer raised ValueError (int string conversion limit) in
    json.loads: a 500. Defence: safejson.loads parses integers itself and refuses any outside a
    signed 64-bit range (the store's widest column) with 422 naming the field, before int()."""
    cases = [
        ("POST", "/v1/jobs", f'{{"command": ["true"], "resources": {{"gpu": {HUGE}}}}}', "resources.gpu"),
        ("POST", "/v1/admin/tokens", f'{{"expires_in": {HUGE}}}', "expires_in"),
        ("POST", "/v1/admin/users", f'{{"name": "zed", "team": "alpha", "tier": {HUGE}}}', "tier"),
        ("PUT", "/v1/secrets/HF_TOKEN", f'{{"value": {HUGE}}}', "value"),
        ("PUT", "/v1/admin/teams/alpha", f'{{"gpu_quota": {HUGE}}}', "gpu_quota"),
        ("POST", "/v1/admin/workers/w-none/drain", f'{{"deadline": {HUGE}}}', "deadline"),
        # Also what breaks float(): 1e999 is infinity, NaN is not JSON.
        ("POST", "/v1/jobs", '{"command": ["true"], "resources": {"cpu": 1e999}}', "resources.cpu"),
        ("POST", "/v1/jobs", '{"command": ["true"], "max_runtime": NaN}', "max_runtime"),
    ]
    for method, path, raw, field in cases:
        status, body = conn.call(method, path, raw.encode())
        err = error_of(status, body, 422)
        assert fields(err) == {field}, (path, err)


def test_lone_surrogate_is_refused_at_the_edge_naming_the_field(cp: ControlPlane, conn: Conn) -> None:
    """Finding 7c: "\\ud800" decodes to a lone surrogate that cannot be encoded to UTF-8: a command,
    env value or secret failed in the database (500), a token description dropped the connection.
    Defence: safejson.loads refuses any string or key holding a lone surrogate (or NUL) with 422
    naming the field, so nothing downstream sees it; JobSpec refuses one too (for the SDK/CLI)."""
    with cp.client() as admin:
        jobs_before = len(admin.get("/v1/jobs").json()["jobs"])
        tokens_before = len(admin.get("/v1/admin/tokens").json()["tokens"])
    cases = [
        ("POST", "/v1/jobs", r'{"command": ["echo", "\ud800"]}', "command.1"),
        ("POST", "/v1/jobs", r'{"command": ["true"], "env": {"LR": "0.1\udfff"}}', "env.LR"),
        ("POST", "/v1/jobs", r'{"command": ["true"], "artifacts": ["out\u0000"]}', "artifacts.0"),
        ("PUT", "/v1/secrets/HF_TOKEN", r'{"value": "sk-\ud800"}', "value"),
        ("POST", "/v1/admin/tokens", r'{"description": "ci \ud83d"}', "description"),
        ("POST", "/v1/admin/users", r'{"name": "zed", "team": "alpha", "tier": "\udc00"}', "tier"),
    ]
    for method, path, raw, field in cases:
        status, body = conn.call(method, path, raw.encode())
        err = error_of(status, body, 422)
        assert fields(err) == {field}, (path, err)
        assert "\\ud" in err["details"][0]["message"] or "NUL" in err["details"][0]["message"], err
    # A key, and raw UTF-8 bytes of a surrogate (not JSON's escape) are refused as well.
    status, body = conn.call("POST", "/v1/jobs", rb'{"command": ["true"], "env": {"\ud800": "x"}}')
    assert fields(error_of(status, body, 422)) == {"env.\\ud800"}
    status, body = conn.call("POST", "/v1/jobs", b'{"command": ["true", "\xed\xa0\x80"]}')
    error_of(status, body, 400)
    with cp.client() as admin:  # nothing was stored
        assert len(admin.get("/v1/jobs").json()["jobs"]) == jobs_before
        assert len(admin.get("/v1/admin/tokens").json()["tokens"]) == tokens_before
        assert admin.get("/v1/secrets").json()["secrets"] == []
    # Valid Unicode (a surrogate pair is one character) still goes through.
    status, body = conn.call("POST", "/v1/admin/tokens", rb'{"description": "\u00e9t\u00e9 \ud83d\ude00"}')
    assert status == 201 and body["description"] == "été 😀", body
    with pytest.raises(ValidationError, match="lone surrogate"):
        JobSpec.model_validate({"command": ["echo", "\ud800"]})


def test_hostile_query_and_path_parameters_get_4xx(conn: Conn) -> None:
    """Query and path parameters: numbers past the store's columns, NUL (PostgreSQL refuses it in
    text, so a filter or job id holding one failed in the store), undecodable cursors, percent-encoded
    surrogates. Defences: bounded Query() parameters, the cursor's decoder (422), BodyLimit refusing
    NUL in any /v1/ path or query (422), and the server decoding %-escapes with replacement."""
    cases = {
        "/v1/jobs?limit=99999999999999999999": 422,
        f"/v1/jobs?limit={HUGE}": 422,
        "/v1/jobs?cursor=garbage": 422,
        "/v1/jobs?cursor=%ED%A0%80": 422,
        "/v1/jobs/%00": 422,
        "/v1/jobs?name=%00": 422,
        "/v1/jobs?user=a%00b": 422,
        "/v1/admin/audit?actor=%00": 422,
        f"/v1/jobs/j-none/events?after={HUGE}": 422,
        f"/v1/jobs/j-none/logs?since={HUGE}": 422,
        "/v1/jobs/%ED%A0%80": 404,
        "/v1/jobs/j-none/artifacts/%00": 422,
    }
    for path, expected in cases.items():
        status, body = conn.call("GET", path)
        error_of(status, body, expected)


def test_token_creation_does_not_tell_which_users_exist(cp: ControlPlane) -> None:
    """Finding 8: POST /v1/admin/tokens {"user": X} answered 403 for an existing user and 422 for a
    missing one, so names could be enumerated. Defence: api_tenancy.not_yours gives a caller who
    may not manage X the same 403 and body whether X exists or not; only an admin (who lists all
    users anyway) is told "no user"."""

    def ask(bearer: str, user: str) -> httpx.Response:
        with cp.client(bearer) as c:
            return c.post("/v1/admin/tokens", json={"user": user})

    for caller in ("uma", "tara"):  # a plain user; a team admin of alpha (bob is in beta)
        exists, missing = ask(token(cp, caller), "bob"), ask(token(cp, caller), "no-such-user")
        assert exists.status_code == missing.status_code == 403, (exists.text, missing.text)
        assert exists.json() == missing.json()
    assert ask(token(cp, "uma"), "tara").json() == ask(token(cp, "uma"), "no-such-user").json()
    assert ask(token(cp, "tara"), "uma").status_code == 201  # their own team's user
    missing = ask(cp.token, "no-such-user")
    assert missing.status_code == 422 and missing.json()["error"]["details"][0]["field"] == "user"


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zero_bomb(size: int, truncate: bool = False) -> bytes:
    """A tar.gz of one file of ``size`` zero bytes, about size/1000 bytes of gzip (built from one
    compressed MiB repeated: a full flush resets deflate's history, so every MiB compresses alike).
    ``truncate``: the stream ends 1 MiB into the file's data (a refusal then can only come from
    the header)."""
    info = tarfile.TarInfo("zeros.bin")
    info.size = size
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    mib = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate; the gzip wrapper is written here
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    one = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    gz = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    if truncate:
        return gz + head + one
    tail = bytes(size % len(mib)) + bytes(1024)  # the rest, then the end-of-archive blocks
    crc = zlib.crc32(header)
    for _ in range(size // len(mib)):
        crc = zlib.crc32(mib, crc)
    crc = zlib.crc32(tail, crc)
    body = head + one * (size // len(mib)) + c.compress(tail) + c.flush()
    unpacked = len(header) + size + 1024
    return gz + body + struct.pack("<II", crc, unpacked & 0xFFFFFFFF)


def test_workdir_bundle_unpacked_size_and_file_count_are_limited(cp: ControlPlane) -> None:
    """Finding 8: a 1 MiB workdir bundle unpacked to 1 GiB on the worker. Defence: POST /v1/workdirs
    streams the tar.gz's headers (bundles.check_bundle, tarfile "r|gz" in a thread) and answers 413
    past TRAINYARD_WORKDIR_UNPACKED_LIMIT or TRAINYARD_WORKDIR_FILE_LIMIT, 422 for a broken archive,
    before anything is stored; an oversized member is refused at its header, before inflating."""
    bomb = _zero_bomb(1 << 30)
    assert len(bomb) < 1_100_000
    headers = {"Content-Type": "application/gzip"}
    refused: list[bytes] = []
    with cp.client(token(cp, "uma")) as c:
        ok = c.post("/v1/workdirs", content=_tar_gz({"train.py": b"print(1)\n"}), headers=headers)
        assert ok.status_code == 201, ok.text
        r = c.post("/v1/workdirs", content=bomb, headers=headers)
        assert r.status_code == 413 and "512Mi" in r.json()["error"]["message"], r.text
        # Cut 1 MiB into the data: 413, not 422 (broken), so the header alone decided.
        cut = _zero_bomb(1 << 30, truncate=True)
        r = c.post("/v1/workdirs", content=cut, headers=headers)
        assert r.status_code == 413, r.text
        many = _tar_gz({f"f{i}.txt": b"" for i in range(FILE_LIMIT + 1)})
        r = c.post("/v1/workdirs", content=many, headers=headers)
        assert r.status_code == 413 and str(FILE_LIMIT) in r.json()["error"]["message"], r.text
        not_tar = zlib.compress(b"not a tar archive" * 100, wbits=31)
        r = c.post("/v1/workdirs", content=not_tar, headers=headers)
        assert r.status_code == 422, r.text
        refused = [bomb, cut, many, not_tar]
    for body in refused:
        key = f"bundles/alpha/{hashlib.sha256(body).hexdigest()}.tar.gz"
        assert not (cp.settings.objects_dir / key).exists(), key
    # The check itself, past its limits (each member's size counts, from its header).
    two = _tar_gz({"a": bytes(600), "b": bytes(600)})
    assert check_bundle(io.BytesIO(two), 1200, 2) == (2, 1200)
    for limits in [(1199, 2), (1200, 1)]:
        with pytest.raises(BundleRefused) as refusal:
            check_bundle(io.BytesIO(two), *limits)
        assert refusal.value.status == 413


def test_workdir_limits_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limits are settings: TRAINYARD_WORKDIR_UNPACKED_LIMIT (a size, e.g. 10Gi) and
    TRAINYARD_WORKDIR_FILE_LIMIT; defaults 10 GiB and 100,000 files."""
    defaults = Settings()
    assert (defaults.workdir_unpacked_limit, defaults.workdir_file_limit) == (10 << 30, 100_000)
    monkeypatch.setenv("TRAINYARD_WORKDIR_UNPACKED_LIMIT", "2Gi")
    monkeypatch.setenv("TRAINYARD_WORKDIR_FILE_LIMIT", "500")
    s = Settings()
    assert (s.workdir_unpacked_limit, s.workdir_file_limit) == (2 << 30, 500)


def test_viewer_cannot_upload_workdir_bundles(cp: ControlPlane) -> None:
    """Finding 8: a viewer uploaded workdir bundles (201). Defence: POST /v1/workdirs requires the
    right to submit jobs (User.can_submit), as POST /v1/jobs does: 403 before the body is read."""
    bundle = _tar_gz({"viewer.py": b"print('hi')\n"})
    key = cp.settings.objects_dir / f"bundles/alpha/{hashlib.sha256(bundle).hexdigest()}.tar.gz"
    with cp.client(token(cp, "vera")) as c:
        r = c.post("/v1/workdirs", content=bundle, headers={"Content-Type": "application/gzip"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert not key.exists()
    with cp.client(token(cp, "uma")) as c:
        r = c.post("/v1/workdirs", content=bundle, headers={"Content-Type": "application/gzip"})
        assert r.status_code == 201, r.text
    assert key.exists()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_file_is_private(cp: ControlPlane, tmp_path: Path) -> None:
    """Finding 8: trainyard.db (token hashes, sealed secrets, every job) was created mode 0644.
    Defence: store.sql.create_engine creates the SQLite file 0600 before SQLAlchemy opens it
    (SQLite gives -wal and -shm the same mode) and narrows files an older version left open."""
    db = cp.home / "trainyard.db"
    files = [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]
    assert db in files
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
    old = tmp_path / "old.db"
    old.touch()
    os.chmod(old, 0o644)
    store = SqlStore(f"sqlite:///{old}")
    try:
        store.migrate()
        assert _mode(old) == 0o600
        assert all(_mode(p) == 0o600 for p in tmp_path.iterdir()), {
            p.name: oct(_mode(p)) for p in tmp_path.iterdir()
        }
    finally:
        store.close()


def test_safe_reader_is_linear_on_hostile_text() -> None:
    """The nesting check itself must not be the weak spot: a 1 MiB body of escaped quotes (an
    unterminated string) or of brackets inside a string is measured in one pass (a backtracking
    scan took hours on the first)."""
    started = time.monotonic()
    with pytest.raises(safejson.JsonRejected):
        safejson.loads(b'"' + b'\\"' * 500_000)
    assert safejson.loads(b'["' + b"[" * 1_000_000 + b'"]') == ["[" * 1_000_000]
    assert time.monotonic() - started < 10
    assert safejson.loads(b'["' + b"[" * 1_000 + b'"]') == ["[" * 1_000]
