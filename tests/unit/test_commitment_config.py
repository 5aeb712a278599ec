"""Storage Commitment keys and the per-AE switch."""

from __future__ import annotations

from pathlib import Path

import pytest

from storscp.commitment.delivery import retry_delay
from storscp.config import ConfigError, load

AE = '[[remote_ae]]\nname = "CT"\nae_title = "CT_1"\n'


def test_storage_commitment_is_off_unless_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(AE + 'host = "127.0.0.1"\nport = 104\n')
    assert load(path, base_dir=tmp_path).remote_ae[0].storage_commitment is False
    path.write_text(AE + 'host = "127.0.0.1"\nport = 104\nstorage_commitment = true\n')
    config = load(path, base_dir=tmp_path)
    assert config.remote_ae[0].storage_commitment is True
    again = tmp_path / "again.toml"
    again.write_text(config.to_toml())
    assert load(again) == config
    assert config.commitment_dir == tmp_path / "storage" / ".storscp" / "commitment"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (AE + "storage_commitment = true\n", "needs 'host' and 'port'"),
        (AE + 'host = "127.0.0.1"\nstorage_commitment = true\n', "needs 'host' and 'port'"),
        (AE + 'storage_commitment = "yes"\n', "'storage_commitment'"),
        ("commitment_wait_s = -1\n", "'commitment_wait_s'"),
        ("commitment_retry_s = 0\n", "'commitment_retry_s'"),
        ("commitment_retry_s = 20\ncommitment_retry_max_s = 10\n", "'commitment_retry_max_s'"),
        ("commitment_deadline_s = 0\n", "'commitment_deadline_s'"),
        ("commitment_max_references = 0\n", "'commitment_max_references'"),
        ("commitment_max_references = 70000\n", "'commitment_max_references'"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path, base_dir=tmp_path)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_retries_double_up_to_the_maximum(tmp_path: Path) -> None:
    config = load(None, {"commitment_retry_s": 0.5, "commitment_retry_max_s": 3}, base_dir=tmp_path)
    assert [retry_delay(config, n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
