"""One latency-scenario sender: pynetdicom SCU, one association, chunked send.

Run as `python -m bench.latency_client PORT OUT.json SOP_CLASS FILE...`. It
writes, per file, the CLOCK_MONOTONIC time at which the C-STORE response was
decoded (EVT_DIMSE_RECV, in pynetdicom's reactor thread: earlier and steadier
than the return of send_c_store, which waits on pynetdicom's polling loops);
the harness compares those with the times its inotify watcher saw each file
appear. CLOCK_MONOTONIC is system-wide, so the two processes' clocks agree.
A separate process per sender keeps the harness's GIL out of the timings.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.presentation import build_context

from bench.servers import AE_TITLE

SUCCESS = 0x0000


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    port, out, sop_class, files = int(args[0]), Path(args[1]), args[2], [Path(a) for a in args[3:]]
    # Send each file's dataset bytes straight from disk, as storescu does.
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="LATENCY")
    ae.requested_contexts = [build_context(sop_class, [ExplicitVRLittleEndian])]
    received: list[float] = []

    def on_dimse_recv(event: evt.Event) -> None:
        if isinstance(event.message, C_STORE_RSP):
            received.append(time.monotonic())

    assoc = ae.associate(
        "127.0.0.1", port, ae_title=AE_TITLE, evt_handlers=[(evt.EVT_DIMSE_RECV, on_dimse_recv)]
    )
    results: list[dict[str, object]] = []
    try:
        if not assoc.is_established:
            print("association not established", file=sys.stderr)
            return 1
        for path in files:
            rsp = assoc.send_c_store(path)
            status = int(rsp.Status) if "Status" in rsp else None
            # One request in flight at a time: the latest response is this file's.
            success_t = received[-1] if len(received) == len(results) + 1 else None
            results.append({"file": str(path), "success_t": success_t, "status": status})
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
        out.write_text(json.dumps(results))
    return 0 if all(r["status"] == SUCCESS for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
