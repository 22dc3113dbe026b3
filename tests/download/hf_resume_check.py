"""Why app.download fetches bytes itself: does `hf_hub_download` resume after a failed run?

A script, not a test (it measures the installed huggingface_hub, not our code). Run from the
repository root: `python3 tests/download/hf_resume_check.py`. It serves one 3 MB file from the
stand-in hub, cuts the connection half-way (the hub goes away), then downloads again from a
fresh hub and prints how many bytes each run was sent. huggingface_hub 2.4.0: the first run
leaves no partial file (it downloads into a process-unique temporary file that it deletes on
failure), so the second run is sent all 3,000,000 bytes again.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.getcwd())

from huggingface_hub import constants, hf_hub_download

from tests.download.hub import StandInHub

SIZE = 3_000_000


def _serve(src: Path) -> StandInHub:
    hub = StandInHub(src).start()
    constants.ENDPOINT = hub.endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = (hub.endpoint +
                                             "/{repo_id}/resolve/{revision}/{filename}")
    return hub


def main() -> None:
    src = Path(tempfile.mkdtemp()) / "repo"
    src.mkdir()
    (src / "big.safetensors").write_bytes(os.urandom(SIZE))
    out = Path(tempfile.mkdtemp())
    hub = _serve(src)
    hub.cut_after = SIZE // 2
    try:
        hf_hub_download("xai-org/grok-2", "big.safetensors", local_dir=out, endpoint=hub.endpoint)
    except Exception as exc:  # noqa: BLE001 - the cut is the point
        print(f"run 1 failed ({type(exc).__name__}) after {hub.bytes_served('big.safetensors'):,}"
              " bytes sent")
    left = [(str(p.relative_to(out)), p.stat().st_size) for p in out.rglob("*") if p.is_file()]
    print(f"left in the local dir: {left}")
    again = _serve(src)
    hf_hub_download("xai-org/grok-2", "big.safetensors", local_dir=out, endpoint=again.endpoint)
    print(f"run 2 was sent {again.bytes_served('big.safetensors'):,} of {SIZE:,} bytes")
    again.stop()


if __name__ == "__main__":
    main()
