"""The cache on Redis: heartbeats, token buckets and the job-status cache, shared by every replica.

Keys (under the configured prefix):
``worker:heartbeat:{id}``  unix time of the last beat, expiring after the beat's TTL;
``rate:{bucket}``          a hash of tokens and last update, expiring once it would be full again;
``job:status:{id}``        the job's JSON view, 24 h;
``job:gen:{id}``           the job's status generation, bumped by each invalidation;
``job:epoch``              bumped by a flush of every view.

The client is synchronous with short timeouts: these calls run on the control plane's event loop, so
an unreachable Redis must fail fast (and ``ResilientCache`` then serves from the fallback).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from trainyard.cache.base import GENERATION_TTL_S, TOKEN_EPSILON, StatusTicket, take_step, unlimited

_INVALIDATE_CHUNK = 1000  # ids per script call: bounds the time one call holds Redis
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


@dataclass(frozen=True)
class RedisConfig:
    """Where Redis is and how long to wait for it."""

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = ""
    """Put before every key: several deployments (or tests) can share one Redis."""
    connect_timeout_s: float = 0.25
    op_timeout_s: float = 0.5

    def client(self) -> redis.Redis:
        # One immediate retry, on connection errors only: after a Redis restart every pooled
        # connection is dead and the retry takes a fresh one; redis-py's default (three retries with
        # backoff) would hold the event loop for seconds while Redis is down.
        return redis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.connect_timeout_s,
            socket_timeout=self.op_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )

    def async_client(self) -> redis.asyncio.Redis:
        # No socket timeout: blocking reads (XREAD BLOCK) outlast any fixed one; each call bounds
        # itself instead.
        aclient: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            self.url,
            socket_connect_timeout=self.connect_timeout_s,
            retry=AsyncRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        return aclient

    def scan_pattern(self, pattern: str) -> str:
        """A SCAN MATCH pattern for keys under the prefix; glob characters in the prefix are literal."""
        return self.prefix.translate(_GLOB_SPECIAL) + pattern


# Bump counters; delete keys. KEYS[1..n] are counters, KEYS[n+1..] keys to delete; ARGV: n, expiry
# in ms (0: none). A missing counter starts at Redis's clock in microseconds rather than at zero: a
# Redis that restarted empty must not hand out generations a reader saw before the restart, or that
# reader's fill of a stale view would be accepted.
_BUMP = """
local n = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local seed = nil
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    if seed == nil then
      local t = redis.call('TIME')
      seed = tostring(t[1]) .. string.format('%06d', tonumber(t[2]))
    end
    redis.call('SET', KEYS[i], seed)
  end
  redis.call('INCR', KEYS[i])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) end
end
for i = n + 1, #KEYS do redis.call('DEL', KEYS[i]) end
return n
"""

# Compare-and-set: store the view only if generation and epoch are what the reader saw.
_FILL = """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
"""

# Token bucket, atomic across replicas; mirrors base.refill and base.take_step. ARGV: now, rate,
# burst, epsilon. Returns {taken (0/1), tokens left as a string (Lua numbers become integers)}.
_TAKE = """
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local eps = tonumber(ARGV[4])
local held = redis.call('HMGET', KEYS[1], 't', 'u')
local tokens = burst
local stamp = now
if held[1] then
  local elapsed = now - tonumber(held[2])
  if elapsed < 0 then
    -- A replica whose clock lags: refill nothing and keep the later stamp.
    elapsed = 0
    stamp = tonumber(held[2])
  end
  tokens = math.min(burst, tonumber(held[1]) + elapsed * rate)
end
local taken = 0
if tokens >= 1 - eps then
  tokens = math.max(0, tokens - 1)
  taken = 1
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'u', string.format('%.17g', stamp))
if rate > 0 then
  -- A missing bucket reads as full, so the key may go once it would have refilled.
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
else
  redis.call('PERSIST', KEYS[1])
end
return {taken, string.format('%.17g', tokens)}
"""


class RedisCache:
    """``Cache`` on Redis. Raises redis errors when Redis is unreachable; wrap it in ResilientCache."""

    def __init__(
        self,
        config: RedisConfig,
        *,
        clock: Callable[[], float] = time.time,
        client: redis.Redis | None = None,
    ) -> None:
        self.config = config
        self._r = client if client is not None else config.client()
        self._clock = clock
        p = config.prefix
        self._k_beat = p + "worker:heartbeat:"
        self._k_rate = p + "rate:"
        self._k_status = p + "job:status:"
        self._k_gen = p + "job:gen:"
        self._k_epoch = p + "job:epoch"
        self._bump = self._r.register_script(_BUMP)
        self._fill = self._r.register_script(_FILL)
        self._take = self._r.register_script(_TAKE)

    def close(self) -> None:
        self._r.close()

    def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        self._r.set(self._k_beat + worker_id, repr(self._clock()), px=max(1, int(ttl_s * 1000)))

    def heartbeats(self, worker_ids: Sequence[str], ttl_s: float) -> None:
        if not worker_ids:
            return
        at, px = repr(self._clock()), max(1, int(ttl_s * 1000))
        with self._r.pipeline(transaction=False) as pipe:
            for worker_id in worker_ids:
                pipe.set(self._k_beat + worker_id, at, px=px)
            pipe.execute()

    def last_heartbeat(self, worker_id: str) -> float | None:
        raw = cast(bytes | None, self._r.get(self._k_beat + worker_id))
        return None if raw is None else float(raw)

    def last_heartbeats(self, worker_ids: Sequence[str]) -> dict[str, float]:
        ids = list(worker_ids)
        if not ids:
            return {}
        raws = cast(list[bytes | None], self._r.mget([self._k_beat + w for w in ids]))
        return {w: float(raw) for w, raw in zip(ids, raws, strict=True) if raw is not None}

    def take(self, bucket: str, rate_per_s: float, burst: float) -> float:
        if unlimited(rate_per_s, burst):
            return 0.0
        args = [repr(self._clock()), repr(float(rate_per_s)), repr(float(burst)), repr(TOKEN_EPSILON)]
        taken, left = self._take(keys=[self._k_rate + bucket], args=args)
        if int(taken):
            return 0.0
        return take_step(float(left), rate_per_s, burst)[1]

    # ---- status cache --------------------------------------------------------------------------
    def get_status(self, job_id: str) -> tuple[dict[str, Any] | None, StatusTicket]:
        raw, gen, epoch = cast(
            list[bytes | None], self._r.mget([self._k_status + job_id, self._k_gen + job_id, self._k_epoch])
        )
        ticket = StatusTicket(int(gen or 0), int(epoch or 0))
        if raw is None:
            return None, ticket
        view: dict[str, Any] = orjson.loads(raw)  # the hottest read: several times json's speed
        return view, ticket

    def get_statuses(self, job_ids: Sequence[str]) -> list[tuple[dict[str, Any] | None, StatusTicket]]:
        """``get_status`` of each id in one MGET: one round trip for the reads of a whole loop tick
        (each single MGET holds the event loop for a round trip to Redis)."""
        keys = [self._k_epoch]
        for job_id in job_ids:
            keys.append(self._k_status + job_id)
            keys.append(self._k_gen + job_id)
        got = cast(list[bytes | None], self._r.mget(keys))
        epoch = int(got[0] or 0)
        out: list[tuple[dict[str, Any] | None, StatusTicket]] = []
        for i in range(1, len(got), 2):
            raw, gen = got[i], got[i + 1]
            out.append((None if raw is None else orjson.loads(raw), StatusTicket(int(gen or 0), epoch)))
        return out

    def fill_status(self, job_id: str, view: dict[str, Any], ticket: StatusTicket, ttl_s: float) -> bool:
        if ticket.generation is None:
            return False
        raw = orjson.dumps(view)
        keys = [self._k_status + job_id, self._k_gen + job_id, self._k_epoch]
        args: list[str | bytes | int] = [
            str(ticket.generation),
            str(ticket.epoch),
            raw,
            max(1, int(ttl_s * 1000)),
        ]
        return bool(self._fill(keys=keys, args=args))

    def invalidate_status(self, job_ids: Iterable[str]) -> None:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return
        ttl_ms = int(GENERATION_TTL_S * 1000)
        # One script call (one round trip) for the usual handful of ids. Not a pipeline: redis-py
        # checks that a pipeline's scripts are loaded with an extra round trip on every execute.
        for i in range(0, len(ids), _INVALIDATE_CHUNK):
            chunk = ids[i : i + _INVALIDATE_CHUNK]
            self._bump_keys([self._k_gen + j for j in chunk], [self._k_status + j for j in chunk], ttl_ms)

    def flush_statuses(self) -> None:
        # Epoch first: a fill racing the scan below is then refused, and a view stored before the
        # bump exists for the whole scan, which SCAN guarantees to visit.
        self._bump_keys([self._k_epoch], [], 0)
        batch: list[bytes] = []
        for key in self._r.scan_iter(match=self.config.scan_pattern("job:status:*"), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                self._r.unlink(*batch)
                batch.clear()
        if batch:
            self._r.unlink(*batch)

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except (redis.RedisError, OSError):
            return False

    def _bump_keys(self, counters: Sequence[str], delete: Sequence[str], ttl_ms: int) -> None:
        self._bump(keys=[*counters, *delete], args=[len(counters), ttl_ms])
