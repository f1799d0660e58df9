"""Team secrets at rest: sealed per team and name, so neither another key nor a moved row opens them."""

from __future__ import annotations

import os

import pytest

from trainyard.server.secretbox import SecretBox, SecretUnreadable


def test_round_trip_and_fresh_nonce() -> None:
    box = SecretBox(os.urandom(32))
    a, b = box.seal("vision", "HF_TOKEN", "hf_abc"), box.seal("vision", "HF_TOKEN", "hf_abc")
    assert a != b and "hf_abc" not in a
    assert box.open("vision", "HF_TOKEN", a) == "hf_abc"


@pytest.mark.parametrize("team,name", [("nlp", "HF_TOKEN"), ("vision", "OTHER")])
def test_a_ciphertext_moved_to_another_team_or_name_does_not_open(team: str, name: str) -> None:
    box = SecretBox(os.urandom(32))
    sealed = box.seal("vision", "HF_TOKEN", "hf_abc")
    with pytest.raises(SecretUnreadable):
        box.open(team, name, sealed)


def test_another_key_or_a_tampered_value_does_not_open() -> None:
    sealed = SecretBox(os.urandom(32)).seal("vision", "K", "value")
    with pytest.raises(SecretUnreadable):
        SecretBox(os.urandom(32)).open("vision", "K", sealed)
    box = SecretBox(os.urandom(32))
    sealed = box.seal("vision", "K", "value")
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(SecretUnreadable):
        box.open("vision", "K", flipped)
    with pytest.raises(SecretUnreadable):
        box.open("vision", "K", "plaintext")
