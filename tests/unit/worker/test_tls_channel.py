from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from trainyard.worker.config import WorkerConfig
from trainyard.worker.rpc import channel_credentials


def test_tls_channel_needs_cert_and_key_together(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    base = WorkerConfig(server="127.0.0.1:1", token="t", name="w", work_dir=tmp_path)
    assert channel_credentials(base) is None  # plaintext, as before
    with pytest.raises(ValueError, match="both"):
        channel_credentials(dataclasses.replace(base, tls_cert=pem))
    assert channel_credentials(dataclasses.replace(base, tls_ca=pem)) is not None
