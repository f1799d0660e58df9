"""The cache contract: the same behaviour from memory, Redis and the SQL fallback (SQLite and
PostgreSQL); then ResilientCache across a Redis that stops and comes back."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import _pg_admin, _pg_url, sqlite_store
from tests.redis_server import RedisServer, key_prefix, running_redis
from trainyard.cache.base import NO_FILL, Cache
from trainyard.cache.memory import MemoryCache
from trainyard.cache.redis import RedisCache, RedisConfig
from trainyard.cache.resilient import ResilientCache
from trainyard.cache.sql import SqlCache
from trainyard.store import migrate
from trainyard.store.sql import SqlStore


class Clock:
    """Wall time plus an offset the test moves, or frozen. Redis TTLs still run on real time."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.frozen: float | None = None

    def __call__(self) -> float:
        return (time.time() if self.frozen is None else self.frozen) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def freeze(self) -> None:
        """Token-bucket arithmetic becomes exact: no refill from the time the test itself takes."""
        self.frozen = time.time()


@dataclass
class Env:
    kind: str
    cache: Cache
    clock: Clock
    store: SqlStore | None = None

    def worker(self) -> str:
        """A worker id the cache can record beats for (the SQL fallback keeps them per registered
        worker)."""
        if self.store is None:
            return f"w-{uuid.uuid4().hex[:8]}"
        w, _ = self.store.register_worker(
            name=f"w-{uuid.uuid4().hex[:8]}",
            hostname="h",
            pool="default",
            region=None,
            cpu=1,
            memory=1 << 30,
            gpu=0,
            gpu_type=None,
            labels={},
            version="t",
        )
        return w.id


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def sql_stores(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, SqlStore]]:
    """One database of each kind for this module's cache tests, made on first use. Shared, unlike
    the store tests' databases: every test here uses buckets and workers of its own, and cloning a
    PostgreSQL database per test would be most of this module's run time."""
    stores: dict[str, SqlStore] = {}
    admin = None
    name = f"ty_cache_{uuid.uuid4().hex[:10]}"

    class Lazy(dict[str, SqlStore]):
        def __missing__(self, kind: str) -> SqlStore:
            nonlocal admin
            if kind == "sqlite":
                store = sqlite_store(tmp_path_factory.mktemp("cache") / "state.db")
            else:
                template = request.getfixturevalue("pg_template")
                admin = _pg_admin()
                with admin.connect() as c:
                    c.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
                store = SqlStore(_pg_url(name))
            stores[kind] = self[kind] = store
            return store

    yield Lazy()
    for store in stores.values():
        store.close()
    if admin is not None:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def make_env(kind: str, request: pytest.FixtureRequest) -> Iterator[Env]:
    clock = Clock()
    if kind == "memory":
        yield Env(kind, MemoryCache(clock), clock)
    elif kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        cache = RedisCache(RedisConfig(server.url, prefix=key_prefix()), clock=clock)
        yield Env(kind, cache, clock)
        cache.close()
    else:
        store = request.getfixturevalue("sql_stores")[kind]
        yield Env(kind, SqlCache(store, clock=clock), clock, store)


@pytest.fixture(params=["memory", "redis", "sqlite", "postgres"])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    with make_env(request.param, request) as e:
        yield e


@pytest.fixture(params=["memory", "redis"])
def status_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """The implementations that hold a status cache (the SQL fallback always misses)."""
    with make_env(request.param, request) as e:
        yield e


# ---- heartbeats ----------------------------------------------------------------------------------
def test_heartbeat_is_the_time_of_the_beat(env: Env) -> None:
    w = env.worker()
    assert env.cache.last_heartbeat(f"unknown-{uuid.uuid4().hex[:6]}") is None
    at = env.clock()
    env.cache.heartbeat(w, 30.0)
    env.clock.advance(5.0)
    got = env.cache.last_heartbeat(w)
    assert got == pytest.approx(at, abs=0.05)
    env.cache.heartbeat(w, 30.0)
    assert env.cache.last_heartbeat(w) == pytest.approx(env.clock(), abs=0.05)


def test_heartbeat_lapses_after_its_ttl(env: Env) -> None:
    w = env.worker()
    env.cache.heartbeat(w, 0.25)
    assert env.cache.last_heartbeat(w) is not None
    time.sleep(0.35)
    assert env.cache.last_heartbeat(w) is None
    env.cache.heartbeat(w, 0.25)  # a worker that comes back is alive again
    assert env.cache.last_heartbeat(w) is not None


def test_heartbeats_records_many_workers_at_once(env: Env) -> None:
    ws = [env.worker() for _ in range(4)]
    env.cache.heartbeats([], 30.0)  # nothing to write is no error
    at = env.clock()
    env.cache.heartbeats(ws[:3], 30.0)
    got = env.cache.last_heartbeats(ws)
    assert set(ws[:3]) <= set(got)
    for w in ws[:3]:
        assert got[w] == pytest.approx(at, abs=0.05)
        assert env.cache.last_heartbeat(w) == pytest.approx(at, abs=0.05)
    env.cache.heartbeats([ws[3]], 0.25)
    assert env.cache.last_heartbeat(ws[3]) is not None
    time.sleep(0.35)
    assert env.cache.last_heartbeat(ws[3]) is None  # each beat lapses after the TTL given
    assert env.cache.last_heartbeat(ws[0]) is not None


def test_last_heartbeats_answers_for_many_workers_at_once(env: Env) -> None:
    a, b, c = env.worker(), env.worker(), env.worker()
    unknown = f"unknown-{uuid.uuid4().hex[:6]}"
    ids = [a, b, c, unknown]

    def one_by_one() -> dict[str, float]:
        return {w: at for w in ids if (at := env.cache.last_heartbeat(w)) is not None}

    assert env.cache.last_heartbeats([]) == {}
    env.cache.heartbeat(a, 30.0)
    env.cache.heartbeat(b, 0.25)
    got = env.cache.last_heartbeats(ids)
    assert {a, b} <= set(got) and unknown not in got  # c: whatever its registration counts for
    assert got == pytest.approx(one_by_one(), abs=0.05)
    time.sleep(0.35)
    got = env.cache.last_heartbeats(ids)
    assert a in got and b not in got  # b's beat lapsed
    assert got == pytest.approx(one_by_one(), abs=0.05)
    many = [env.worker() for _ in range(5)]
    for w in many:
        env.cache.heartbeat(w, 30.0)
    assert set(env.cache.last_heartbeats([*many, a])) == {*many, a}


# ---- token buckets -------------------------------------------------------------------------------
def test_bucket_starts_full_then_tells_the_wait(env: Env) -> None:
    env.clock.freeze()
    b = uuid.uuid4().hex
    assert [env.cache.take(b, 2.0, 3.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert env.cache.take(b, 2.0, 3.0) == pytest.approx(0.5, abs=1e-5)
    assert env.cache.take(f"{b}-other", 2.0, 3.0) == 0.0  # buckets are independent


def test_bucket_refills_at_its_rate_up_to_its_burst(env: Env) -> None:
    env.clock.freeze()
    b = uuid.uuid4().hex
    for _ in range(3):
        env.cache.take(b, 2.0, 3.0)
    env.clock.advance(0.5)
    assert env.cache.take(b, 2.0, 3.0) == 0.0
    assert env.cache.take(b, 2.0, 3.0) == pytest.approx(0.5, abs=1e-5)
    env.clock.advance(1000.0)  # a long idle spell refills to the burst, never beyond
    assert [env.cache.take(b, 2.0, 3.0) == 0.0 for _ in range(4)] == [True, True, True, False]


def test_waiting_the_time_told_is_enough(env: Env) -> None:
    env.clock.freeze()
    b = uuid.uuid4().hex
    env.cache.take(b, 3.0, 1.0)
    wait = env.cache.take(b, 3.0, 1.0)
    assert wait > 0
    env.clock.advance(wait)
    assert env.cache.take(b, 3.0, 1.0) == 0.0


def test_bucket_without_refill_or_burst_never_gives(env: Env) -> None:
    assert env.cache.take(uuid.uuid4().hex, 0.0, 0.0) == math.inf
    b = uuid.uuid4().hex
    assert [env.cache.take(b, 0.0, 2.0) for _ in range(3)] == [0.0, 0.0, math.inf]


def test_unlimited_bucket_always_gives(env: Env) -> None:
    b = uuid.uuid4().hex
    assert {env.cache.take(b, math.inf, math.inf) for _ in range(5)} == {0.0}


def test_a_clock_stepping_back_adds_no_tokens(env: Env) -> None:
    env.clock.freeze()
    b = uuid.uuid4().hex
    env.cache.take(b, 2.0, 1.0)
    env.clock.advance(-10.0)  # another replica whose clock lags
    assert env.cache.take(b, 2.0, 1.0) > 0
    env.clock.advance(10.0 + 0.5)
    assert env.cache.take(b, 2.0, 1.0) == 0.0


def test_bucket_is_atomic_across_threads(env: Env) -> None:
    b = uuid.uuid4().hex
    got: list[float] = []
    lock = threading.Lock()

    def taker() -> None:
        mine = [env.cache.take(b, 1e-6, 20.0) for _ in range(8)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=taker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got.count(0.0) == 20


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rate=st.floats(0.1, 10.0),
    burst=st.integers(1, 5),
    steps=st.lists(st.one_of(st.just(-1.0), st.floats(0.0, 2.0)), min_size=1, max_size=25),
)
def test_bucket_property(env: Env, rate: float, burst: int, steps: list[float]) -> None:
    """Never more than burst + rate x elapsed tokens; and a wait, once waited, is enough."""
    env.clock.freeze()
    b = uuid.uuid4().hex
    start = env.clock()
    taken = 0
    told: float | None = None  # the wait of the last refusal
    waited = 0.0  # since that refusal
    for step in steps:
        if step >= 0:
            env.clock.advance(step)
            waited += step
            continue
        wait = env.cache.take(b, rate, float(burst))
        if told is not None and waited >= told:
            assert wait == 0.0, "waited as told, yet refused"
        told, waited = (None, 0.0) if wait == 0.0 else (wait, 0.0)
        taken += wait == 0.0
        assert taken <= burst + rate * (env.clock() - start) + 1e-6


# ---- status cache --------------------------------------------------------------------------------
VIEW = {"id": "j1", "status": "RUNNING", "attempts": [{"number": 1, "exit_code": None}], "cpu": 1.5}


def test_status_miss_fill_hit(status_env: Env) -> None:
    c = status_env.cache
    view, ticket = c.get_status("j1")
    assert view is None
    assert c.fill_status("j1", VIEW, ticket, 60.0)
    view, _ = c.get_status("j1")
    assert view == VIEW
    view["status"] = "mutated by a caller"
    assert c.get_status("j1")[0] == VIEW  # callers get copies


def test_fill_begun_before_an_invalidation_is_refused(status_env: Env) -> None:
    c = status_env.cache
    _, ticket = c.get_status("j1")  # a reader misses, then reads the database (the old state) ...
    c.invalidate_status(["j1"])  # ... while a writer commits and invalidates
    assert not c.fill_status("j1", {"status": "PENDING"}, ticket, 60.0)
    view, fresh = c.get_status("j1")
    assert view is None
    assert c.fill_status("j1", {"status": "RUNNING"}, fresh, 60.0)
    assert c.get_status("j1")[0] == {"status": "RUNNING"}


def test_invalidate_drops_views_of_many_jobs_at_once(status_env: Env) -> None:
    c = status_env.cache
    ids = [f"j{i}" for i in range(1200)]  # more than one script call's worth on Redis
    for j in ids[:5] + ids[-5:]:
        assert c.fill_status(j, {"id": j}, c.get_status(j)[1], 60.0)
    assert c.fill_status("other", {"id": "other"}, c.get_status("other")[1], 60.0)
    c.invalidate_status(iter(ids))
    assert all(c.get_status(j)[0] is None for j in ids[:5] + ids[-5:])
    assert c.get_status("other")[0] == {"id": "other"}
    c.invalidate_status([])


def test_flush_drops_every_view_and_refuses_older_fills(status_env: Env) -> None:
    c = status_env.cache
    for j in ("a", "b"):
        c.fill_status(j, {"id": j}, c.get_status(j)[1], 60.0)
    _, before = c.get_status("c")
    c.flush_statuses()
    assert c.get_status("a")[0] is None
    assert c.get_status("b")[0] is None
    assert not c.fill_status("c", {"id": "c"}, before, 60.0)
    assert c.fill_status("c", {"id": "c"}, c.get_status("c")[1], 60.0)


def test_status_view_lapses_after_its_ttl(status_env: Env) -> None:
    c = status_env.cache
    c.fill_status("j1", VIEW, c.get_status("j1")[1], 0.25)
    assert c.get_status("j1")[0] == VIEW
    time.sleep(0.35)
    assert c.get_status("j1")[0] is None


def test_a_no_fill_ticket_fills_nothing(status_env: Env) -> None:
    assert not status_env.cache.fill_status("j1", VIEW, NO_FILL, 60.0)
    assert status_env.cache.get_status("j1")[0] is None


def test_readers_never_keep_a_view_older_than_the_last_commit(status_env: Env) -> None:
    """Readers fill from a 'database' while a writer commits and invalidates: once the writer is
    done, the cache holds the last committed state or nothing."""
    c = status_env.cache
    db = {"version": 0}
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            view, ticket = c.get_status("j")
            if view is None:
                snapshot = dict(db)
                time.sleep(0.0005)  # widen the window between reading and filling
                c.fill_status("j", snapshot, ticket, 60.0)

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in readers:
        t.start()
    for v in range(1, 150):
        db["version"] = v  # commit ...
        c.invalidate_status(["j"])  # ... then invalidate
    time.sleep(0.02)
    stop.set()
    for t in readers:
        t.join()
    view, _ = c.get_status("j")
    assert view is None or view == {"version": 149}


def test_sql_fallback_has_no_status_cache(env: Env) -> None:
    if env.store is None:
        return  # the memory and Redis caches are covered by the status tests above
    assert env.cache.get_status("j1") == (None, NO_FILL)
    assert not env.cache.fill_status("j1", VIEW, NO_FILL, 60.0)
    env.cache.invalidate_status(["j1"])
    env.cache.flush_statuses()
    assert env.cache.get_status("j1") == (None, NO_FILL)


def test_ping(env: Env) -> None:
    assert env.cache.ping()


# ---- Redis specifics -----------------------------------------------------------------------------
def test_redis_keys_and_expiries(redis_server: RedisServer) -> None:
    prefix = key_prefix()
    cache = RedisCache(RedisConfig(redis_server.url, prefix=prefix))
    raw = redis_server.client()
    try:
        cache.heartbeat("w1", 30.0)
        assert 29_000 < raw.pttl(f"{prefix}worker:heartbeat:w1") <= 30_000
        cache.fill_status("j1", VIEW, cache.get_status("j1")[1], 24 * 3600.0)
        assert raw.ttl(f"{prefix}job:status:j1") > 23 * 3600
        cache.invalidate_status(["j1"])
        assert raw.ttl(f"{prefix}job:gen:j1") > 24 * 3600
        cache.take("submit:alice", 1.0, 5.0)
        assert 0 < raw.pttl(f"{prefix}rate:submit:alice") <= 2000  # gone once it would be full again
    finally:
        raw.close()
        cache.close()


def test_redis_generations_are_not_reused_after_a_restart() -> None:
    """A Redis restarted empty must not hand out a generation a reader saw before the restart."""
    server = RedisServer()
    server.start()
    try:
        config = RedisConfig(server.url, prefix=key_prefix())
        reader, writer = RedisCache(config), RedisCache(config)
        writer.invalidate_status(["j1"])
        _, ticket = reader.get_status("j1")  # a reader misses before the restart ...
        server.restart()
        writer.invalidate_status(["j1"])  # ... a commit after it invalidates once ...
        assert not reader.fill_status("j1", VIEW, ticket, 60.0)  # ... and the old read is refused
        reader.close()
        writer.close()
    finally:
        server.stop()


# ---- the migration that brought the fallback's table ---------------------------------------------
def test_rate_limit_migration_rolls_back_with_users_in_place(store: SqlStore) -> None:
    token = store.create_user("alice", "vision")
    migrate.downgrade(store.engine, "0001")
    assert "tier" not in {c["name"] for c in sa.inspect(store.engine).get_columns("users")}
    assert "rate_buckets" not in sa.inspect(store.engine).get_table_names()
    with store.engine.connect() as conn:  # the user survived the rebuild (this code reads users.tier)
        assert conn.execute(sa.text("SELECT name FROM users")).scalars().all() == ["alice"]
    store.migrate()
    assert store.authenticate(token) is not None


# ---- ResilientCache: Redis stops and comes back --------------------------------------------------
@dataclass
class Outage:
    server: RedisServer
    store: SqlStore
    cache: ResilientCache
    prefix: str

    def raw_key(self, key: str) -> str:
        return self.prefix + key

    def wait_until_redis_used(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.cache.primary_up:
            assert time.monotonic() < deadline, "Redis was not used again after it came back"
            self.cache.ping()
            self.cache.get_status("probe")  # calls while down are what schedule the probes
            time.sleep(0.02)


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[Outage]:
    server = RedisServer()
    server.start()
    store = sqlite_store(tmp_path / "state.db")
    prefix = key_prefix()
    primary = RedisCache(RedisConfig(server.url, prefix=prefix))
    cache = ResilientCache(
        primary,
        SqlCache(store, heartbeat_ttl_s=1.0),
        heartbeat_ttl_s=1.0,
        probe_interval_s=0.2,
        max_pending=3,
    )
    yield Outage(server, store, cache, prefix)
    primary.close()
    store.close()
    server.stop()


def _register(store: SqlStore, name: str) -> str:
    w, _ = store.register_worker(
        name=name,
        hostname=name,
        pool="default",
        region=None,
        cpu=1,
        memory=1 << 30,
        gpu=0,
        gpu_type=None,
        labels={},
        version="t",
    )
    store.touch_workers({w.id: time.time() - 100})  # the table's copy is old, as between persists
    return w.id


def _timed(fn: object, limit: float = 1.0) -> None:
    t0 = time.monotonic()
    assert callable(fn)
    fn()
    assert time.monotonic() - t0 < limit


def test_outage_is_served_by_the_fallback_then_redis_again(outage: Outage) -> None:
    c, raw = outage.cache, outage.server.client()
    w = _register(outage.store, "w1")
    c.heartbeat(w, 1.0)
    assert raw.exists(outage.raw_key(f"worker:heartbeat:{w}"))
    assert c.take("submit:alice", 1.0, 1.0) == 0.0

    outage.server.stop()
    t0 = time.monotonic()
    c.heartbeat(w, 1.0)
    assert not c.primary_up
    assert c.last_heartbeat(w) is not None
    assert w in c.last_heartbeats([w])
    assert outage.store.get_worker(w).last_heartbeat == pytest.approx(time.time(), abs=1)  # type: ignore[union-attr]
    assert c.take("submit:alice", 1.0, 1.0) == 0.0  # the fallback's own bucket
    assert c.take("submit:alice", 1.0, 1.0) > 0
    assert c.get_status("j1") == (None, NO_FILL)
    assert not c.fill_status("j1", VIEW, NO_FILL, 60.0)
    c.invalidate_status(["j1"])
    assert c.ping()  # the fallback answers
    assert time.monotonic() - t0 < 2.0, "calls during the outage must not wait for Redis"

    outage.server.start()
    outage.wait_until_redis_used()
    c.heartbeat(w, 1.0)
    assert raw.exists(outage.raw_key(f"worker:heartbeat:{w}"))
    view, ticket = c.get_status("j2")
    assert view is None and ticket.generation is not None
    assert c.fill_status("j2", VIEW, ticket, 60.0)
    assert c.get_status("j2")[0] == VIEW
    raw.close()


def test_missed_invalidations_are_applied_before_redis_serves_again(outage: Outage) -> None:
    c, raw = outage.cache, outage.server.client()
    _, before = c.get_status("j1")
    c.fill_status("j1", {"status": "PENDING"}, before, 60.0)

    outage.server.stop()
    c.invalidate_status(["j1"])  # the commit's invalidation cannot reach Redis
    outage.server.start()
    # As if Redis had kept its data through the outage: the view invalidated meanwhile is back.
    raw.set(outage.raw_key("job:status:j1"), '{"status":"PENDING"}')
    raw.set(outage.raw_key("job:status:j2"), '{"status":"RUNNING"}')

    outage.wait_until_redis_used()
    assert c.get_status("j1")[0] is None
    assert c.get_status("j2")[0] == {"status": "RUNNING"}  # untouched jobs keep their views
    assert not c.fill_status("j1", {"status": "PENDING"}, before, 60.0)  # the old read stays refused
    raw.close()


def test_too_many_missed_invalidations_flush_every_view(outage: Outage) -> None:
    c, raw = outage.cache, outage.server.client()
    _, before = c.get_status("j9")
    outage.server.stop()
    c.invalidate_status(["j1", "j2"])
    c.invalidate_status(["j3", "j4"])  # more than max_pending=3
    outage.server.start()
    for j in ("j1", "j4", "j9"):
        raw.set(outage.raw_key(f"job:status:{j}"), '{"stale":true}')

    outage.wait_until_redis_used()
    assert list(raw.scan_iter(match=outage.raw_key("job:status:*"))) == []
    assert not c.fill_status("j9", {"stale": True}, before, 60.0)
    raw.close()


def test_a_switch_does_not_declare_live_workers_dead(outage: Outage) -> None:
    c = outage.cache
    live, dead = _register(outage.store, "live"), _register(outage.store, "dead")
    c.heartbeat(live, 1.0)

    outage.server.stop()
    # The fallback's copy of the live worker's beat is 100 s old; it must still count as alive.
    assert c.last_heartbeat(live) is not None
    assert live in c.last_heartbeats([live])
    c.heartbeat(live, 1.0)
    outage.server.start()
    # Redis came back empty: no beat of anyone until they beat again.
    deadline = time.monotonic() + 5
    while not c.primary_up:
        assert c.last_heartbeat(live) is not None
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert c.last_heartbeat(live) is not None

    # A worker that stopped beating is declared dead within a TTL of the last switch.
    for _ in range(7):
        c.heartbeat(live, 1.0)
        time.sleep(0.2)
    assert c.last_heartbeat(live) is not None
    assert c.last_heartbeat(dead) is None


def test_an_unresponsive_redis_times_out_to_the_fallback(outage: Outage) -> None:
    c, raw = outage.cache, outage.server.client()
    raw.execute_command("CLIENT", "PAUSE", 900, "ALL")
    t0 = time.monotonic()
    assert c.take("b", 1.0, 1.0) == 0.0  # one op timeout, then the fallback
    assert time.monotonic() - t0 < 1.0
    assert not c.primary_up
    _timed(lambda: c.take("b", 1.0, 1.0), 0.2)  # no further waits on Redis
    outage.wait_until_redis_used()
    raw.close()
