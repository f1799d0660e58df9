"""One object-store contract, run against the local directory store and S3 (moto's server).

Presigned URLs are exercised over plain HTTP, as workers and users use them: the local store's
through the control plane's /objects route, S3's against the bucket itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
import pytest

from tests.harness import ControlPlane
from tests.s3_server import REGION, S3Server, s3_server
from trainyard.objects.base import MIN_PART_SIZE, ObjectNotFound, ObjectStore, Part, UploadNotFound
from trainyard.objects.factory import open_object_store
from trainyard.objects.local import LocalObjectStore
from trainyard.objects.s3 import S3ObjectStore
from trainyard.server.settings import url_secret

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """Serves the local store's signed URLs (the /objects route)."""
    plane = ControlPlane(tmp_path_factory.mktemp("objects-cp") / "home").start()
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    if request.param == "local":
        plane: ControlPlane = request.getfixturevalue("cp")
        return LocalObjectStore(plane.settings.objects_dir, url_secret(plane.home), plane.url)
    server: S3Server = request.getfixturevalue("s3")
    # Small parts, so that a stream of a few MiB already goes up in parts.
    return S3ObjectStore(
        server.create_bucket(),
        "pre/fix",
        endpoint=server.endpoint,
        region=REGION,
        part_size=MIN_PART_SIZE,
        multipart_threshold=MIN_PART_SIZE,
    )


@pytest.fixture
def key() -> str:
    return f"jobs/{uuid.uuid4().hex[:12]}/1/artifacts/out.bin"


async def _chunks(total: int, size: int = 1 << 20) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield bytes([sent // size % 251]) * n
        sent += n


def _expect(total: int, size: int = 1 << 20) -> bytes:
    return b"".join(bytes([i // size % 251]) * min(size, total - i) for i in range(0, total, size))


def test_put_get_exists_size_delete(store: ObjectStore, key: str) -> None:
    assert not store.exists(key)
    with pytest.raises(ObjectNotFound):
        store.get(key)
    with pytest.raises(ObjectNotFound):
        store.size(key)
    with pytest.raises(ObjectNotFound):
        list(store.iter(key))
    store.put(key, b"hello")
    assert store.exists(key) and store.size(key) == 5 and store.get(key) == b"hello"
    store.put(key, b"replaced")
    assert store.get(key) == b"replaced"
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # deleting what is gone is not an error
    with pytest.raises(ValueError):
        store.put("../escape", b"x")


def test_list_keys_by_prefix(store: ObjectStore) -> None:
    """What another writer (Fluent Bit) left under a prefix: every key, in order, and nothing else."""
    top = f"fluent-bit-{uuid.uuid4().hex[:8]}"
    keys = [f"{top}/j2/1/pod-b/0002.gz", f"{top}/j1/2/pod-a/0001.gz", f"{top}/j1/1/pod-a/0001.gz"]
    for k in keys:
        store.put(k, b"x")
    store.put(f"{top}-other/j1/1/x.gz", b"x")
    assert store.list_keys(f"{top}/") == sorted(keys)
    assert store.list_keys(f"{top}/j1/") == sorted(keys[1:])
    assert store.list_keys(f"{top}/", limit=2) == sorted(keys)[:2]
    assert store.list_keys(f"{top}/nothing/") == []
    store.delete(keys[0])
    assert store.list_keys(f"{top}/") == sorted(keys[1:])


def test_iter_streams_in_chunks(store: ObjectStore, key: str) -> None:
    data = _expect(3 << 20) + b"tail!"
    store.put(key, data)
    chunks = list(store.iter(key, chunk_size=1 << 20))
    assert b"".join(chunks) == data
    assert len(chunks) >= 4 and max(len(c) for c in chunks) <= 1 << 20


def test_put_stream_and_its_limit(store: ObjectStore, key: str) -> None:
    def put(k: str, total: int, limit: int) -> int:
        return asyncio.run(store.put_stream(k, _chunks(total), limit))

    assert put(key, 100, 1000) == 100
    assert store.get(key) == _expect(100)
    # Past the multipart threshold of the S3 store: parts, then one object.
    big = 2 * MIN_PART_SIZE + 12345
    assert put(key, big, big) == big
    assert hashlib.sha256(store.get(key)).digest() == hashlib.sha256(_expect(big)).digest()
    other = key.replace("out.bin", "over.bin")
    with pytest.raises(ValueError, match="limit"):
        put(other, 3 * MIN_PART_SIZE, 2 * MIN_PART_SIZE + 1)
    assert not store.exists(other)
    with pytest.raises(ValueError, match="limit"):
        put(other, 200, 100)
    assert not store.exists(other)


def test_presigned_get_and_put_over_plain_http(store: ObjectStore, key: str) -> None:
    store.put(key, b"stored bytes")
    r = httpx.get(store.presign(key, "GET", 60))
    assert r.status_code == 200 and r.content == b"stored bytes"
    put = httpx.put(store.presign(key, "PUT", 60), content=b"uploaded bytes")
    assert put.status_code == 200, put.text
    assert store.get(key) == b"uploaded bytes"
    missing = store.presign(key.replace("out.bin", "missing.bin"), "GET", 60)
    assert httpx.get(missing).status_code == 404


def test_presigned_urls_are_scoped_to_one_key_method_and_time(store: ObjectStore, key: str) -> None:
    other = key.replace("out.bin", "other.bin")
    store.put(key, b"mine")
    store.put(other, b"not yours")
    url = store.presign(key, "GET", 120)
    if isinstance(store, LocalObjectStore):
        assert httpx.get(url.replace("out.bin", "other.bin")).status_code == 403
        assert httpx.put(url, content=b"x").status_code == 403
        assert httpx.put(store.presign(key, "PUT", 60).replace("out.bin", "other.bin")).status_code == 403
        old = LocalObjectStore(store.root, store._secret, store.public_url, clock=lambda: time.time() - 3600)
        assert httpx.get(old.presign(key, "GET", 60)).status_code == 403
        assert store.get(other) == b"not yours"
        return
    # moto does not check signatures, so S3's scope is checked in the URL: SigV4 signs the method,
    # the path (bucket and key) and the expiry, and the signature differs for every key and method.
    assert isinstance(store, S3ObjectStore)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.path == f"/{store.bucket}/pre/fix/{key}"
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["120"]
    assert query["X-Amz-SignedHeaders"] == ["host"]
    assert query["X-Amz-Credential"][0].endswith(f"/{REGION}/s3/aws4_request")
    signed_at = time.mktime(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")) - time.timezone
    assert abs(signed_at - time.time()) < 60
    sig = query["X-Amz-Signature"][0]
    assert sig != parse_qs(urlsplit(store.presign(other, "GET", 120)).query)["X-Amz-Signature"][0]
    assert sig != parse_qs(urlsplit(store.presign(key, "PUT", 120)).query)["X-Amz-Signature"][0]
    assert parse_qs(urlsplit(store.presign(key, "GET", 60)).query)["X-Amz-Expires"] == ["60"]


def test_multipart_round_trip_over_plain_http(store: ObjectStore, key: str) -> None:
    first, last = _expect(MIN_PART_SIZE), b"the last part may be small"
    upload_id = store.create_multipart(key)
    etags = []
    for number, body in ((1, first), (2, last)):
        r = httpx.put(store.presign_part(key, upload_id, number, 60), content=body)
        assert r.status_code == 200, r.text
        etag = r.headers["etag"]
        assert etag.strip('"') == hashlib.md5(body).hexdigest()  # S3's ETag for a part
        etags.append(Part(number, etag))
    assert not store.exists(key)  # nothing is visible before completion
    with pytest.raises(ValueError):
        store.complete_multipart(key, upload_id, [Part(1, '"' + "0" * 32 + '"'), etags[1]])
    with pytest.raises(ValueError):
        store.complete_multipart(key, upload_id, [etags[1], etags[0]])
    assert store.complete_multipart(key, upload_id, etags) == len(first) + len(last)
    assert store.get(key) == first + last


def test_multipart_refusals_and_abort(store: ObjectStore, key: str) -> None:
    upload_id = store.create_multipart(key)
    small = [
        Part(n, httpx.put(store.presign_part(key, upload_id, n, 60), content=b"tiny").headers["etag"])
        for n in (1, 2)
    ]
    with pytest.raises(ValueError):  # every part but the last must be at least 5 MiB
        store.complete_multipart(key, upload_id, small)
    store.abort_multipart(key, upload_id)
    store.abort_multipart(key, upload_id)  # aborting twice is not an error
    assert not store.exists(key)
    if isinstance(store, S3ObjectStore):
        # S3 answers a late part or completion with NoSuchUpload; moto fails with a 500 (a KeyError
        # inside it) instead, so here the upload's absence is checked in the bucket's listing.
        listing = store.client.list_multipart_uploads(Bucket=store.bucket)
        assert upload_id not in {u.get("UploadId") for u in listing.get("Uploads", [])}
        return
    late = httpx.put(store.presign_part(key, upload_id, 3, 60), content=b"too late")
    assert late.status_code == 404
    for gone in (upload_id, "0" * 32):
        with pytest.raises(UploadNotFound):
            store.complete_multipart(key, gone, small[1:])


def test_local_part_urls_are_scoped_to_their_upload_and_part(cp: ControlPlane, key: str) -> None:
    store = LocalObjectStore(cp.settings.objects_dir, url_secret(cp.home), cp.url)
    upload_id = store.create_multipart(key)
    url = store.presign_part(key, upload_id, 1, 60)
    assert httpx.put(url.replace("part=1", "part=2"), content=b"x").status_code == 403
    assert httpx.put(url.replace(upload_id, store.create_multipart(key)), content=b"x").status_code == 403
    whole = url.split("&upload_id=")[0] + "&sig=" + parse_qs(urlsplit(url).query)["sig"][0]
    assert httpx.put(whole, content=b"x").status_code == 403
    assert httpx.put(url.replace("out.bin", "other.bin"), content=b"x").status_code == 403
    assert httpx.put(url, content=b"x").status_code == 200
    expired = LocalObjectStore(store.root, url_secret(cp.home), cp.url, clock=lambda: 0.0)
    assert httpx.put(expired.presign_part(key, upload_id, 1, 60), content=b"x").status_code == 403


def test_open_object_store_picks_the_backend(tmp_path: Path, s3: S3Server) -> None:
    def open_(url: str | None, endpoint: str | None = None) -> ObjectStore:
        return open_object_store(
            url, home=tmp_path, secret=b"s", public_url="http://cp", endpoint=endpoint, region=REGION
        )

    default = open_(None)
    assert isinstance(default, LocalObjectStore) and default.root == tmp_path / "objects"
    local = open_(f"file://{tmp_path / 'elsewhere'}")
    assert isinstance(local, LocalObjectStore) and local.root == tmp_path / "elsewhere"
    bucket = s3.create_bucket()
    remote = open_(f"s3://{bucket}/team/prefix/", s3.endpoint)
    assert isinstance(remote, S3ObjectStore) and remote.bucket == bucket
    remote.put("a/b.txt", b"under the prefix")
    assert (
        s3.client().get_object(Bucket=bucket, Key="team/prefix/a/b.txt")["Body"].read() == b"under the prefix"
    )
    for bad in ("gs://bucket/x", "s3://", "/plain/path", "file://"):
        with pytest.raises(ValueError, match="object store"):
            open_(bad)


# ---- keys: any UTF-8 name a filesystem allows, nothing that could escape or break --------------
NAMES = [
    "café.txt",
    "my model.bin",
    "a#b?c%d.txt",
    "日本語/データ.csv",
    "emoji-🚀.txt",
    "cafe\u0301.txt",  # the same word decomposed (NFD): a different name, kept as it is
    "quo\"te's + plus & semi;colon=eq,comma@at!.txt",
    "%2e%2e/%2F%00%5C.txt",  # percent signs are characters, never decoded into '..', '/', NUL or '\'
    "~tilde/[brackets]{braces}^caret`tick|pipe<lt>gt.txt",
    "trailing space .txt",
    "deep/er/and/deeper/.hidden",
    "x" * 255,
    "é" * 127 + ".",  # 255 bytes in UTF-8
]
UNSAFE_KEYS = [
    "",
    "/etc/passwd",
    "jobs/x/../../escape",
    "jobs/x/./y",
    "jobs//x",
    "jobs/x/",
    "..",
    ".multipart/x",  # the local store's own files
    "jobs/a\x00b",
    "jobs/a\nb",
    "jobs/a\rb",
    "jobs/a\x1bb",
    "jobs/a\x7fb",
    "jobs/a\x85b",
    "jobs/a\\..\\b",
    "jobs/lone-\udcff-surrogate",
    "jobs/non\ufffecharacter",
    "jobs/" + "x" * 256,
    "jobs/" + "é" * 128,
    "jobs/" + "/".join(["x" * 200] * 6),  # over 1024 bytes in all
]


def _name_key(name: str) -> str:
    return f"jobs/{uuid.uuid4().hex[:12]}/1/artifacts/{name}"


@pytest.mark.parametrize("name", NAMES)
def test_any_utf8_name_is_a_key_end_to_end(store: ObjectStore, name: str) -> None:
    key = _name_key(name)
    data = name.encode() + bytes(range(256))
    store.put(key, data)
    assert store.exists(key) and store.size(key) == len(data) and store.get(key) == data
    # Presigned URLs quote the key; the request that arrives names exactly this key again.
    r = httpx.get(store.presign(key, "GET", 60))
    assert r.status_code == 200 and r.content == data
    put = httpx.put(store.presign(key, "PUT", 60), content=b"replaced " + data)
    assert put.status_code == 200, put.text
    assert store.get(key) == b"replaced " + data
    store.delete(key)
    assert not store.exists(key)


@pytest.mark.parametrize("bad", UNSAFE_KEYS, ids=ascii)
def test_unsafe_keys_are_refused_by_every_operation(store: ObjectStore, bad: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.put(bad, b"x"),
        lambda: store.get(bad),
        lambda: store.exists(bad),
        lambda: store.size(bad),
        lambda: store.delete(bad),
        lambda: store.presign(bad, "GET", 60),
        lambda: store.presign(bad, "PUT", 60),
        lambda: store.create_multipart(bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="invalid object key"):
            call()


def test_a_unicode_key_goes_up_in_parts(store: ObjectStore) -> None:
    key = _name_key("大きな モデル #1.bin")
    first, last = _expect(MIN_PART_SIZE), b"tail"
    upload_id = store.create_multipart(key)
    parts = []
    for number, body in ((1, first), (2, last)):
        r = httpx.put(store.presign_part(key, upload_id, number, 60), content=body)
        assert r.status_code == 200, r.text
        parts.append(Part(number, r.headers["etag"]))
    assert store.complete_multipart(key, upload_id, parts) == len(first) + len(last)
    assert store.get(key) == first + last


@pytest.mark.parametrize("name", NAMES)
def test_local_keys_map_to_their_utf8_names_under_the_root(cp: ControlPlane, name: str) -> None:
    store = LocalObjectStore(cp.settings.objects_dir, url_secret(cp.home), cp.url)
    key = _name_key(name)
    store.put(key, b"x")
    # On disk, each component is the key's own UTF-8 bytes (no escaping another tool must undo),
    # and the file is under the root: a checked key has no component that could lead elsewhere.
    path = Path(os.fsdecode(os.fsencode(store.root) + b"/" + key.encode("utf-8")))
    assert path.is_file() and path.read_bytes() == b"x"
    assert path.resolve().is_relative_to(store.root.resolve())


def _aws_uri_encode(text: str, *, slash: bool) -> str:
    """AWS's UriEncode: every byte but A-Za-z0-9 and -._~ as %XX (uppercase), '/' kept in paths."""
    return quote(text, safe="/~" if not slash else "~")


def _verify_sigv4_query(method: str, url: str, secret: str) -> None:
    """Check a presigned URL as S3 does, independently of botocore: from the request that httpx
    actually sends, S3 decodes the path into the key, encodes it again its own way, and computes the
    signature over that canonical request. A key quoted differently by the signer would not match."""
    sent = httpx.Request(method, url).url
    path = unquote(sent.raw_path.decode("ascii").split("?", 1)[0], errors="strict")
    query = parse_qs(sent.query.decode("ascii"), keep_blank_values=True)
    signature = query.pop("X-Amz-Signature")[0]
    canonical_query = "&".join(
        f"{_aws_uri_encode(k, slash=True)}={_aws_uri_encode(v[0], slash=True)}"
        for k, v in sorted(query.items())
    )
    host = sent.netloc.decode("ascii")
    canonical = "\n".join(
        [
            method,
            _aws_uri_encode(path, slash=False),
            canonical_query,
            f"host:{host}\n",
            "host",
            "UNSIGNED-PAYLOAD",
        ]
    )
    amz_date = query["X-Amz-Date"][0]
    _, day, region, service, _ = query["X-Amz-Credential"][0].split("/")
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    assert hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest() == signature, (method, url)


@pytest.mark.parametrize("name", NAMES)
def test_s3_presigned_urls_for_any_name_verify(s3: S3Server, name: str) -> None:
    store = S3ObjectStore(s3.create_bucket(), "pre/fix", endpoint=s3.endpoint, region=REGION)
    key = _name_key(name)
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    _verify_sigv4_query("GET", store.presign(key, "GET", 60), secret)
    _verify_sigv4_query("PUT", store.presign(key, "PUT", 60), secret)
    upload_id = store.create_multipart(key)
    _verify_sigv4_query("PUT", store.presign_part(key, upload_id, 1, 60), secret)
    store.abort_multipart(key, upload_id)
    # And the bytes land under exactly this key in the bucket.
    assert httpx.put(store.presign(key, "PUT", 60), content=b"bytes").status_code == 200
    assert s3.client().get_object(Bucket=store.bucket, Key=f"pre/fix/{key}")["Body"].read() == b"bytes"


def test_s3_keys_count_the_prefix_against_s3s_limit(s3: S3Server) -> None:
    store = S3ObjectStore(s3.create_bucket(), "p" * 100, endpoint=s3.endpoint, region=REGION)
    fits = "jobs/" + "/".join(["x" * 200] * 5)  # 1009 bytes: a key, but not under a 101-byte prefix
    with pytest.raises(ValueError, match="1024"):
        store.put(fits, b"x")
    store.put(fits[: 1024 - 101], b"x")
