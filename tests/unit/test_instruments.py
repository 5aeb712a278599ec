"""Every metric storscp exports is documented, and named by Prometheus's conventions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from storscp.instruments import HELP, SCRAPED

README = Path(__file__).resolve().parents[2] / "README.md"
ALL = {**HELP, **SCRAPED}


def documented() -> set[str]:
    """Metric names in the first column of the README's metric table."""
    return set(re.findall(r"^\| `(storscp_[a-z_]+)` \|", README.read_text(), re.MULTILINE))


def test_the_readme_lists_every_metric_and_no_other() -> None:
    assert documented() == set(ALL)


@pytest.mark.parametrize("name", sorted(ALL))
def test_names_follow_prometheus_conventions(name: str) -> None:
    assert re.fullmatch(r"storscp_[a-z][a-z0-9_]*[a-z0-9]", name)
    if "seconds" in name or "bytes" in name:
        assert re.search(r"_(seconds|bytes)(_total)?$", name), "the unit goes last"
    assert not name.endswith("_count") and not name.endswith("_sum")
    assert ALL[name] and not ALL[name].endswith(".")
