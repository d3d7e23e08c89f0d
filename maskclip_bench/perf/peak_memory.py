"""Peak memory of the running process on a device: reset the mark, read it back.

CPU: the peak resident set (Linux `VmHWM`), reset by writing 5 to `/proc/self/clear_refs` (falls back to
`ru_maxrss`, cumulative, where the reset is refused). GPU: `torch.cuda.max_memory_allocated` after
`reset_peak_memory_stats`. Used by `bench` (`perf`) and the `--max-batch` probes (`memory`).
"""
from __future__ import annotations

import platform
import resource
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss_bytes() -> int | None:
    """The process's resident set now (Linux VmRSS), or None."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int:
    """The process's peak resident set since the last `reset_peak_rss` (VmHWM), else since start (ru_maxrss)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if platform.system() == "Darwin" else rss * 1024)


def reset_peak(device: torch.device) -> bool:
    """Start a new peak measurement on `device`; False where the CPU reset is not possible (cumulative peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return reset_peak_rss()


def read_peak(device: torch.device) -> int:
    """Peak bytes since `reset_peak` (GPU: allocator; CPU: resident set)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
