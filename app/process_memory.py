"""This process's memory, for the status bar and `bench` (no torch, no Qt)."""

from __future__ import annotations

import sys


def resident_bytes() -> int | None:
    """Resident memory now (Linux: VmRSS from /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_bytes() -> int | None:
    """The largest resident memory so far (getrusage), or None where there is none (Windows).
    ru_maxrss is kilobytes on Linux, bytes on macOS."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
