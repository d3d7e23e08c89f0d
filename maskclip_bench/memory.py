"""Peak memory of a training step and the largest batch that fits a budget (issue 15, item 5).

CPU: the process's peak resident set (Linux `VmHWM`), reset before each variant by writing 5 to
`/proc/self/clear_refs` so that a variant's peak is its own (falls back to `ru_maxrss`, cumulative, where the
reset is refused). GPU: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`.

`--max-batch`: each probe runs in a fresh subprocess (`python -m maskclip_bench.memory VARIANT MODEL BATCH ...`),
so one probe's allocations and caches cannot hide in the next one's peak; a probe fits when two training steps
run with a peak at most the budget (on GPU the allocator is also capped at the budget, so it fails with
out-of-memory rather than borrowing beyond it). The search doubles the batch until a probe does not fit, then
bisects between the last fit and the first miss.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def largest_fitting(fits: Callable[[int], bool], start: int = 2, limit: int = 1 << 16) -> tuple[int | None, int]:
    """The largest batch b in [start, limit] with fits(b), assuming fits is monotone (true up to some b, then
    false): double from `start` until a miss, then bisect. Returns (largest fit or None, number of probes)."""
    probes = 0

    def probe(b: int) -> bool:
        nonlocal probes
        probes += 1
        return fits(b)

    if not probe(start):
        return None, probes
    good, bad = start, None
    while bad is None:
        nxt = min(good * 2, limit)
        if nxt == good:
            return good, probes
        if probe(nxt):
            good = nxt
        else:
            bad = nxt
    while bad - good > 1:
        mid = (good + bad) // 2
        if probe(mid):
            good = mid
        else:
            bad = mid
    return good, probes


@dataclass
class Probe:
    """One probe's answer: did two steps run within the budget, with what peak (bytes), or why not."""

    batch: int
    fits: bool
    peak_bytes: int | None
    reason: str = ""


def run_probe(variant: str, model: str, batch: int, precision: str, device: str, budget_bytes: int,
              timeout_s: float = 900.0) -> Probe:
    """Run one probe in a fresh Python process and read its one-line JSON answer."""
    cmd = [sys.executable, "-m", "maskclip_bench.memory", variant, model, str(batch), precision, device,
           str(budget_bytes)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return Probe(batch, False, None, f"probe timed out after {timeout_s:.0f} s")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return Probe(**json.loads(line))
    tail = " ".join((done.stderr or "").strip().splitlines()[-1:])[:200]
    return Probe(batch, False, None, f"probe exited {done.returncode}: {tail}")


def _watch_rss(budget_bytes: int, batch: int) -> None:
    """CPU: end the probe as soon as its resident set passes the budget (the machine's memory is shared)."""
    while True:
        rss = current_rss_bytes()
        if rss is not None and rss > budget_bytes:
            print(json.dumps({"batch": batch, "fits": False, "peak_bytes": rss,
                              "reason": "resident set passed the budget"}), flush=True)
            os._exit(0)
        time.sleep(0.02)


def _probe_main(argv: list[str]) -> None:
    """Subprocess entry: build the variant at the batch, run two steps, print a Probe as JSON."""
    from maskclip_bench import perf

    variant, model, batch, precision, device_name, budget = argv
    batch_size, budget_bytes = int(batch), int(budget)
    device = perf.resolve_device(device_name)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_bytes / total), device)
    else:
        threading.Thread(target=_watch_rss, args=(budget_bytes, batch_size), daemon=True).start()
    try:
        images, text = perf.make_batch(model, batch_size, device)
        step = perf.build_step(variant, model, images, text, precision)
        reset_peak(device)
        for _ in range(2):
            step()
        perf.synchronize(device)
        peak = read_peak(device)
        print(json.dumps({"batch": batch_size, "fits": peak <= budget_bytes, "peak_bytes": peak,
                          "reason": "" if peak <= budget_bytes else "peak above the budget"}), flush=True)
    except torch.OutOfMemoryError:
        print(json.dumps({"batch": batch_size, "fits": False, "peak_bytes": None, "reason": "out of memory"}),
              flush=True)
    except RuntimeError as exc:  # CPU allocators raise a plain RuntimeError when memory runs out
        if "memory" not in str(exc).lower():
            raise
        print(json.dumps({"batch": batch_size, "fits": False, "peak_bytes": None, "reason": "out of memory"}),
              flush=True)


if __name__ == "__main__":  # pragma: no cover - exercised through run_probe
    _probe_main(sys.argv[1:])
