"""``jsontext.dumps`` writes the bytes ``json.dumps`` writes (compact, UTF-8), whichever way it
takes: floats of every magnitude, every character (control characters, DEL, non-ASCII, lone
surrogates), integers past 64 bits, keys sorted or not. Job specs' fingerprints and the fast
submission's response body rest on it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainyard.model import jsontext
from trainyard.model.spec import JobSpec, spec_fingerprint

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF))
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def _stdlib(obj: Any, *, ensure_ascii: bool, sort_keys: bool, allow_nan: bool) -> bytes | type:
    try:
        text = json.dumps(
            obj, ensure_ascii=ensure_ascii, sort_keys=sort_keys, allow_nan=allow_nan, separators=(",", ":")
        )
        return text.encode()
    except Exception as e:
        return type(e)


def _ours(obj: Any, *, ensure_ascii: bool, sort_keys: bool, allow_nan: bool) -> bytes | type:
    try:
        return jsontext.dumps(obj, ensure_ascii=ensure_ascii, sort_keys=sort_keys, allow_nan=allow_nan)
    except Exception as e:
        return type(e)


@settings(max_examples=600, deadline=None)
@given(_values, st.booleans(), st.booleans(), st.booleans())
def test_the_same_bytes_as_json_dumps(obj: Any, ensure_ascii: bool, sort_keys: bool, allow_nan: bool) -> None:
    kw = dict(ensure_ascii=ensure_ascii, sort_keys=sort_keys, allow_nan=allow_nan)
    assert _ours(obj, **kw) == _stdlib(obj, **kw)


@pytest.mark.parametrize(
    "value",
    [
        1e-05,
        -2.5e-07,
        5e-324,
        1e16,
        -1.2345678901234568e17,
        1.7976931348623157e308,
        0.0001,
        -0.0,
        9999999999999998.0,
        2**64,
        -(2**63) - 1,
        "\x7f",
        '\x00\x1f\b\f\n\r\t"\\',
        "é ☃ 𝄞",
        "\ud800",
        {"b": 1, "a": [1e-5, "x"]},
        {1: "non-str key"},
        "1e-05 and 0.00001 in a string",
    ],
)
def test_the_edges(value: Any) -> None:
    for ensure_ascii in (True, False):
        for sort_keys in (True, False):
            kw = dict(ensure_ascii=ensure_ascii, sort_keys=sort_keys, allow_nan=False)
            assert _ours(value, **kw) == _stdlib(value, **kw)


def test_a_spec_fingerprint_is_the_hash_of_json_dumps() -> None:
    import hashlib

    for body in (
        {"command": ["true"]},
        {
            "command": ["python", "é", "\x7f"],
            "resources": {"cpu": 0.00001, "memory": "1Gi"},
            "env": {"A": "☃"},
        },
        {"command": ["x"], "resources": {"cpu": 1024}, "name": "n", "team": "t", "priority": "high"},
    ):
        canonical = JobSpec.model_validate(body).canonical()
        blob = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
        assert spec_fingerprint(canonical) == hashlib.sha256(blob).hexdigest()
