"""The live log tail on Redis: one capped stream per attempt, shared by every control-plane replica.

Stream ``log:{job_id}:{attempt}`` holds one contiguous run of the attempt's bytes. Each entry's ID is
``{end_offset}-0`` and its fields are ``o`` (start offset) and ``d`` (the bytes), so IDs are ordered
by byte offset: a follower at byte ``since`` resumes with XRANGE/XREAD after ``{since}-0`` and gets
neither a gap nor a duplicate. An ended attempt has a last entry ``{end_offset}-1`` with field ``e``;
it wakes blocked followers and never carries bytes.

Who follows an attempt is shared too: sorted set ``logfollow:{job_id}:{attempt}`` (follower ->
expiry), and ``logasked:{job_id}:{attempt}`` marks that its agent was asked to push lately, so the
followers of all replicas ask it once per interval between them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import redis
import redis.asyncio

from trainyard.cache.redis import RedisConfig

# ARGV: offset, data, cap in bytes, max entries, ttl ms, ttl ms once ended. Returns the held end.
# Mirrors server.logtail.LogTails.append; keep them in step.
_APPEND = """
local key = KEYS[1]
local offset = tonumber(ARGV[1])
local data = ARGV[2]
local cap = tonumber(ARGV[3])
local finish = nil
local marker = nil
local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
if #last > 0 then
  local e, seq = string.match(last[1][1], '^(%d+)-(%d+)$')
  finish = tonumber(e)
  if seq == '1' then marker = last[1][1] end
end
local gap = false
if finish == nil then
  finish = offset  -- the first push (or the first since a restart): start where the worker is
elseif offset > finish then
  gap = true
  finish = offset
end
local skip = finish - offset
if skip < #data then
  if gap then
    redis.call('DEL', key)  -- restart the tail; sealed chunks cover the missing bytes
  elseif marker then
    redis.call('XDEL', key, marker)  -- late bytes after the end: the marker moves behind them
  end
  local start = finish
  finish = finish + #data - skip
  redis.call('XADD', key, 'MAXLEN', '~', ARGV[4], string.format('%d-0', finish),
    'o', string.format('%d', start), 'd', string.sub(data, skip + 1))
  if finish - cap > 0 then
    -- Drop entries that end at or before the newest cap bytes begin.
    redis.call('XTRIM', key, 'MINID', string.format('%d-0', finish - cap + 1))
  end
  if marker then redis.call('XADD', key, string.format('%d-1', finish), 'e', '1') end
end
local ended = marker ~= nil
if redis.call('EXISTS', key) == 1 then
  redis.call('PEXPIRE', key, ended and ARGV[6] or ARGV[5])
end
return finish
"""

# ARGV: ttl ms once ended.
_MARK_ENDED = """
local key = KEYS[1]
local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
if #last == 0 then
  redis.call('XADD', key, '0-1', 'e', '1')
else
  local e, seq = string.match(last[1][1], '^(%d+)-(%d+)$')
  if seq ~= '1' then redis.call('XADD', key, e .. '-1', 'e', '1') end
end
redis.call('PEXPIRE', key, ARGV[1])
return 1
"""

# KEYS: the attempt's followers (a sorted set: follower -> expiry in ms), its "agent asked" marker.
# ARGV: follower, ttl ms, resend ms. Returns 1 when the agent must be asked (again) to push.
# Mirrors server.logtail.LogTails.follow; keep them in step.
_FOLLOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return 1 end
return 0
"""

# KEYS as _FOLLOW; ARGV: follower. Returns 1 when nobody follows any more.
_UNFOLLOW = """
redis.call('ZREM', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""


def _split_id(entry_id: bytes) -> tuple[int, int]:
    end, _, seq = entry_id.partition(b"-")
    return int(end), int(seq)


class RedisLogTails:
    """``LogTailStore`` on Redis. Raises redis errors when Redis is unreachable; wrap it in
    ResilientLogTails.

    The sync methods use a client with short timeouts (they run on the event loop); ``wait`` uses an
    asyncio client with a blocking XREAD, created on first use in the running loop.
    """

    def __init__(
        self,
        config: RedisConfig,
        *,
        cap: int = 4 << 20,
        max_entries: int = 10_000,
        keep_s: float = 24 * 3600.0,
        keep_ended_s: float = 3600.0,
    ) -> None:
        self.config = config
        self._cap = cap
        self._keep_ended_ms = int(keep_ended_s * 1000)
        self._limits = (cap, max_entries, int(keep_s * 1000), self._keep_ended_ms)
        self._r = config.client()
        self._append = self._r.register_script(_APPEND)
        self._mark = self._r.register_script(_MARK_ENDED)
        self._follow = self._r.register_script(_FOLLOW)
        self._unfollow = self._r.register_script(_UNFOLLOW)
        self._ar: redis.asyncio.Redis | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None

    def _key(self, job_id: str, attempt: int) -> str:
        return f"{self.config.prefix}log:{job_id}:{attempt}"

    def append(self, job_id: str, attempt: int, offset: int, data: bytes) -> int:
        args: list[bytes | int] = [offset, data, *self._limits]
        return int(self._append(keys=[self._key(job_id, attempt)], args=args))

    def read(self, job_id: str, attempt: int, since: int) -> tuple[int, bytes]:
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            self._r.xrange(self._key(job_id, attempt), min=f"({since}-0"),
        )
        start: int | None = None
        parts: list[bytes] = []
        pos = since
        for entry_id, fields in entries:
            end, seq = _split_id(entry_id)
            if seq != 0:
                continue  # the end marker
            lo = int(fields[b"o"])
            if start is not None and lo != pos:
                start, parts = None, []  # not contiguous (never written so): keep the newest run
            data = fields[b"d"]
            if start is None:
                start = max(since, lo)
                data = data[start - lo :]
            parts.append(data)
            pos = end
        if start is None:
            return since, b""
        # Whole entries are trimmed, so up to one entry more than the cap may be held; serve
        # exactly the newest cap bytes, as the in-memory tail does.
        out = b"".join(parts)
        if len(out) > self._cap:
            out = out[pos - self._cap - start :]
            start = pos - self._cap
        return start, out

    def end(self, job_id: str, attempt: int) -> int | None:
        last = cast(list[tuple[bytes, Any]], self._r.xrevrange(self._key(job_id, attempt), count=1))
        return _split_id(last[0][0])[0] if last else None

    def mark_ended(self, job_id: str, attempt: int) -> None:
        self._mark(keys=[self._key(job_id, attempt)], args=[self._keep_ended_ms])

    def _follow_keys(self, job_id: str, attempt: int) -> list[str]:
        return [
            f"{self.config.prefix}logfollow:{job_id}:{attempt}",
            f"{self.config.prefix}logasked:{job_id}:{attempt}",
        ]

    def follow(self, job_id: str, attempt: int, follower: str, ttl_s: float, resend_s: float) -> bool:
        args: list[str | int] = [follower, max(1, int(ttl_s * 1000)), max(1, int(resend_s * 1000))]
        return bool(self._follow(keys=self._follow_keys(job_id, attempt), args=args))

    def unfollow(self, job_id: str, attempt: int, follower: str) -> bool:
        return bool(self._unfollow(keys=self._follow_keys(job_id, attempt), args=[follower]))

    async def wait(self, job_id: str, attempt: int, timeout: float, since: int | None = None) -> None:
        r = self._aclient()
        key = self._key(job_id, attempt)
        block_ms = max(1, int(timeout * 1000))
        try:
            # Blocking reads have no socket timeout; this bounds the whole wait instead.
            async with asyncio.timeout(timeout + self.config.op_timeout_s):
                after = "$"
                if since is not None:
                    last = cast(list[tuple[bytes, Any]], await r.xrevrange(key, count=1))
                    if last:
                        end, seq = _split_id(last[0][0])
                        if end > since or seq != 0:
                            return
                        after = last[0][0].decode()
                    else:
                        after = "0-0"
                await r.xread({key: after}, count=1, block=block_ms)
        except TimeoutError:
            raise redis.TimeoutError(f"Redis did not answer within {timeout:.1f}s") from None

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except (redis.RedisError, OSError):
            return False

    def close(self) -> None:
        self._r.close()

    async def aclose(self) -> None:
        """Close both clients; call it from the loop that ran ``wait``."""
        if self._ar is not None:
            with contextlib.suppress(redis.RedisError, OSError, RuntimeError):
                await self._ar.aclose()
            self._ar = None
        self.close()

    def _aclient(self) -> redis.asyncio.Redis:
        # An asyncio client's connections belong to the loop that opened them.
        loop = asyncio.get_running_loop()
        if self._ar is None or self._aloop is not loop:
            self._ar, self._aloop = self.config.async_client(), loop
        return self._ar
