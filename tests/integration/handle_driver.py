"""A program that uses ``opsbook.start()`` as a web app or a chat bot would, for the tests:

    python -m tests.integration.handle_driver RUNBOOK ENV EXTRAVARS_JSON CANCEL_FILE

Starts the run (project, inventory root and runs dir from the OPSBOOK_* environment), prints
each event record on stdout as it comes (one JSON object a line), and calls
``handle.cancel()`` from a thread of its own once CANCEL_FILE exists; then prints the result
record with the handle's status history (``"history"``) and status. Exits 0.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import opsbook
from opsbook.handle import RunHandle, result_record


def _cancel_when(trigger: Path, handle: RunHandle) -> None:
    while not handle.done:
        if trigger.exists():
            handle.cancel()
            return
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    runbook, env, extravars, trigger = argv
    handle = opsbook.start(runbook, env, json.loads(extravars), reason="handle driver")
    threading.Thread(target=_cancel_when, args=(Path(trigger), handle), daemon=True).start()
    for event in handle.events():
        print(json.dumps(event), flush=True)
    result = handle.wait()
    record = {**result_record(result), "history": handle.status_history, "final": handle.status}
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
