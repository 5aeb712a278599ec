"""The health check of deploy/haproxy.cfg: pynetdicom's bytes, HAProxy's syntax.

Whether HAProxy's check really marks a node UP and DOWN is for
tests/system/test_scaleout.py, with real nodes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pynetdicom.pdu import A_ASSOCIATE_RQ

from storscp import balancer
from support.rawscu import VERIFICATION, associate_rq

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"


def test_check_request_is_byte_equal_to_pynetdicoms() -> None:
    ours = balancer.associate_rq("GATEWAY1")
    theirs = associate_rq(
        balancer.CHECK_CALLING_AE,
        "GATEWAY1",
        [(VERIFICATION, ["1.2.840.10008.1.2"])],
        max_pdu=balancer.MAX_PDU_BYTES,
        implementation_uid=balancer.IMPLEMENTATION_CLASS_UID,
    )
    assert ours == theirs
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(ours)
    assert decoded.called_ae_title == "GATEWAY1"


def test_deploy_config_carries_the_check_for_its_ae_title_and_is_valid() -> None:
    text = DEPLOY.read_text()
    for line in balancer.haproxy_check_lines("GATEWAY1"):
        assert f"\n    {line}\n" in text, line
    result = subprocess.run(
        ["/usr/sbin/haproxy", "-c", "-f", str(DEPLOY)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
