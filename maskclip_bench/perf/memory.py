"""Peak memory of a training step and the largest batch that fits a budget (issue 15, item 5).

CPU: the process's peak resident set (Linux `VmHWM`), reset before each variant by writing 5 to
`/proc/self/clear_refs` so that a variant's peak is its own (falls back to `ru_maxrss`, cumulative, where the
reset is refused). GPU: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`.

`--max-batch`: each probe runs in a fresh subprocess (`python -m maskclip_bench.perf.memory VARIANT MODEL BATCH ...`),
so one probe's allocations and caches cannot hide in the next one's peak; a probe fits when two training steps
run with a peak at most the budget (on GPU the allocator is also capped at the budget, so it fails with
out-of-memory rather than borrowing beyond it). The search doubles the batch until a probe does not fit, then
bisects between the last fit and the first miss.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from maskclip_bench.perf import throughput as perf
from maskclip_bench.perf.peak_memory import current_rss_bytes, peak_rss_bytes, read_peak, reset_peak, reset_peak_rss
from maskclip_core.distributed import pick_device

# Re-exported: the peak readers are part of this module's measuring API.
__all__ = ["Probe", "current_rss_bytes", "largest_fitting", "peak_rss_bytes", "read_peak", "reset_peak",
           "reset_peak_rss", "run_probe"]

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
    cmd = [sys.executable, "-m", "maskclip_bench.perf.memory", variant, model, str(batch), precision, device,
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
    variant, model, batch, precision, device_name, budget = argv
    batch_size, budget_bytes = int(batch), int(budget)
    device = pick_device(device_name)
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
