"""Rate-limit tiers: the spec string, and what a parsed tier means for a token bucket."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainyard.cache.memory import MemoryCache
from trainyard.cache.tiers import UNLIMITED, Tier, parse_limit, parse_tiers, tier_of


def test_the_default_setting() -> None:
    tiers = parse_tiers("free=5/day,standard=60/min,enterprise=unlimited")
    assert tiers == {
        "free": Tier(rate_per_s=5 / 86400, burst=5),
        "standard": Tier(rate_per_s=1.0, burst=60),
        "enterprise": UNLIMITED,
    }
    assert tiers["enterprise"].unlimited and not tiers["free"].unlimited


@pytest.mark.parametrize(
    ("text", "period"),
    [
        ("10/s", 1),
        ("10/sec", 1),
        ("10/second", 1),
        ("10/min", 60),
        ("10/minute", 60),
        ("10/minutes", 60),
        ("10/h", 3600),
        ("10/hour", 3600),
        ("10/day", 86400),
        ("10/d", 86400),
        ("10/15min", 900),
        (" 10 / 2 h ", 7200),
        ("10/DAY", 86400),
    ],
)
def test_units(text: str, period: float) -> None:
    assert parse_limit(text) == Tier(rate_per_s=10 / period, burst=10)


def test_whitespace_and_empty_parts_are_tolerated() -> None:
    assert parse_tiers(" free = 1/s , , Pro=unlimited ") == {"free": Tier(1.0, 1.0), "pro": UNLIMITED}
    assert parse_tiers("") == {}


def test_zero_is_a_tier_that_never_submits() -> None:
    tier = parse_limit("0/day")
    assert tier == Tier(0.0, 0.0)
    assert MemoryCache().take("b", tier.rate_per_s, tier.burst) == math.inf


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("free", "write name=limit"),
        ("free=5", "not a limit"),
        ("free=5/fortnight", "unknown unit"),
        ("free=-5/day", "not a limit"),
        ("free=5/0min", "longer than zero"),
        ("free=5/day,free=6/day", "given twice"),
        ("=5/day", "tier name"),
        ("Free Tier=5/day", "tier name"),
        ("free=lots", "not a limit"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tiers(spec)


def test_tier_of() -> None:
    tiers = parse_tiers("free=5/day,enterprise=unlimited")
    assert tier_of(tiers, "free", "enterprise") == tiers["free"]
    assert tier_of(tiers, None, "enterprise") is UNLIMITED
    with pytest.raises(ValueError, match="'gold' is not defined"):
        tier_of(tiers, "gold", "enterprise")


_UNIT_S = {"s": 1, "min": 60, "h": 3600, "day": 86400}


@settings(max_examples=40)
@given(
    tiers=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True),
        st.one_of(st.just(None), st.tuples(st.integers(0, 10_000), st.sampled_from(list(_UNIT_S)))),
        max_size=5,
    )
)
def test_any_written_spec_parses_back(tiers: dict[str, tuple[int, str] | None]) -> None:
    spec = ",".join(f"{k}={'unlimited' if v is None else f'{v[0]}/{v[1]}'}" for k, v in tiers.items())
    parsed = parse_tiers(spec)
    assert parsed.keys() == tiers.keys()
    for name, v in tiers.items():
        if v is None:
            assert parsed[name].unlimited
        else:
            n, unit = v
            assert parsed[name].burst == n
            assert parsed[name].rate_per_s == pytest.approx(n / _UNIT_S[unit])


@settings(max_examples=40)
@given(n=st.integers(1, 50), unit=st.sampled_from(list(_UNIT_S)), idle=st.floats(0, 1e6))
def test_a_tier_grants_its_n_per_period_as_a_burst_then_refills_over_the_period(
    n: int, unit: str, idle: float
) -> None:
    tier = parse_limit(f"{n}/{unit}")
    now = [1_000_000.0]
    cache = MemoryCache(clock=lambda: now[0])
    now[0] += idle  # however long the bucket sat unused, it holds n at most
    assert sum(cache.take("b", tier.rate_per_s, tier.burst) == 0.0 for _ in range(n + 1)) == n
    now[0] += _UNIT_S[unit]  # one period later: n again, no more
    assert sum(cache.take("b", tier.rate_per_s, tier.burst) == 0.0 for _ in range(n + 1)) == n
