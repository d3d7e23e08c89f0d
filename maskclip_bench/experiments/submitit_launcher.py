"""`ablate --launcher slurm`: each cell as one scheduler job through submitit, preemption-safe.

Submission: the cells not finished and not already held by a queued or running job go out as one job array
(``--max-concurrent`` is its ``%N`` cap); each cell folder gets ``job.json`` with its job id, so a rerun, or
``--status``, finds the job from the folder alone. Inside a job, one task per GPU (``tasks_per_node =
gpus_per_node``) trains data-parallel exactly as under torchrun: submitit's `TorchDistributedEnvironment` exports
MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK from the SLURM variables, and the trainer joins the process
group from those; rank 0 then evaluates and writes ``cell.json``.

Preemption and time limits follow submitit's checkpoint protocol. SLURM sends submitit's signal (USR2, 90 s
before the limit, ``--signal=USR2@90``); while the cell trains, `CellTask` relays it to the trainer's SIGTERM
handler, so the step in flight finishes on every rank, the trainer writes its checkpoint and returns; the signal
is then raised again for submitit, which calls `CellTask.checkpoint` and requeues the job (``scontrol requeue``;
exit code 144 under the local executor, whose controller restarts the tasks). The requeued job resumes from
``last.pt`` bit-exactly (model, optimizer, EMA teacher, RNG and data position are in the checkpoint). A plain
SIGTERM (``scancel``, preemption without submitit's signal) also checkpoints; the cell is then ``stopped`` and
the next `ablate` resubmits it. Nothing here is imported unless ``--launcher slurm`` is used.
"""
from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from maskclip_bench.experiments import grid_status
from maskclip_bench.experiments.ablate import CellJob, CellResult, run_cell
from maskclip_core.errors import ConfigError
from maskclip_core.thread_limit import usable_cores


@dataclass
class SlurmSpec:
    """What each cell's job asks the scheduler for (the `ablate` flags), and which submitit backend sends it."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    partition: str | None = None
    time_min: int = 60
    account: str | None = None
    qos: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    max_concurrent: int | None = None
    cluster: str = "slurm"  # submitit backend: slurm, or local / debug (this machine), or a plugin's name
    signal_delay_s: int = 90
    name: str = "maskclip-ablate"

    @property
    def tasks_per_node(self) -> int:
        """One task (one training process) per GPU, as torchrun's ``--nproc_per_node``."""
        return max(1, self.gpus_per_node)


def parse_time(text: str) -> int:
    """A SLURM ``--time`` (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) in whole
    minutes, rounded up; ConfigError when it is not one of those."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ConfigError(f"--time '{text}' is not a SLURM time (MM, HH:MM:SS or D-HH:MM:SS)")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    elif second is not None:  # MM:SS
        seconds = int(first) * 60 + int(second)
    else:  # MM
        seconds = int(first) * 60
    if seconds <= 0:
        raise ConfigError(f"--time '{text}' is zero")
    return -(-seconds // 60)


def parse_extra(items: Sequence[str]) -> dict[str, Any]:
    """``--slurm-extra k=v`` pairs as sbatch parameters ({k: v}; a bare ``k`` is a flag without a value)."""
    extra: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"--slurm-extra '{item}' has no key (use key=value, e.g. constraint=a100)")
        extra[key] = value if sep else True
    return extra


def make_executor(folder: Path, spec: SlurmSpec) -> Any:
    """A submitit AutoExecutor for the spec's backend with every sbatch parameter set."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher slurm needs submitit: pip install 'maskclip-bench[slurm]'") from None
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=spec.cluster)
    except RuntimeError as exc:  # e.g. no srun on PATH
        raise ConfigError(f"--launcher slurm: {str(exc).splitlines()[0]} (on a machine without a scheduler use "
                          f"--launcher local)") from None
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"unknown submitit cluster '{spec.cluster}': {exc}") from None
    params: dict[str, Any] = {
        "name": spec.name, "timeout_min": spec.time_min, "nodes": spec.nodes, "tasks_per_node": spec.tasks_per_node,
        "gpus_per_node": spec.gpus_per_node or None, "cpus_per_task": spec.cpus_per_task,
        "slurm_partition": spec.partition, "slurm_account": spec.account, "slurm_qos": spec.qos,
        "slurm_signal_delay_s": spec.signal_delay_s,
        "slurm_additional_parameters": dict(spec.extra) or None,
        "slurm_array_parallelism": spec.max_concurrent,
    }
    try:
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    except (ValueError, NameError) as exc:  # submitit rejects a parameter (e.g. nodes > 1 on the local backend)
        raise ConfigError(f"--launcher slurm: {str(exc).splitlines()[0]}") from None
    return executor


class CellTask:
    """The function a job runs: one cell, resumed from its checkpoint when there is one. Checkpointable in
    submitit's sense: `checkpoint` returns the resubmission that a requeued job runs."""

    def __init__(self, job: CellJob) -> None:
        self.job = job

    def __call__(self) -> CellResult:
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # data-parallel inside the job: the variables torchrun would set
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        job = self.job
        if job.threads <= 0:  # a cell's threads: the CPUs SLURM gave this task
            job = CellJob(**{**job.__dict__, "threads": _cpus_of_task()})
        relay = _SignalRelay(env._usr_sig())
        with relay:
            result = run_cell(job, job_id=env.job_id)
        if relay.received is not None and result.error.startswith("InterruptedError"):
            # Training checkpointed at the end of its step: now let submitit checkpoint (calls self.checkpoint)
            # and requeue, as if its signal had just arrived. Only rank 0 requeues (submitit's rule); the other
            # ranks return, and the requeue restarts them with the job.
            signal.raise_signal(relay.received)
        return result

    def checkpoint(self) -> Any:
        """submitit's hook on its signal: run this cell again; it resumes from ``checkpoints/last.pt``."""
        import submitit

        return submitit.helpers.DelayedSubmission(CellTask(self.job))


def _cpus_of_task() -> int:
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return usable_cores()


class _SignalRelay:
    """While installed: submitit's checkpoint signal, arriving during training, is handed to the trainer's SIGTERM
    handler (which ends training cleanly after a checkpoint) and remembered; arriving at any other moment (set-up,
    evaluation) it goes straight to submitit, which requeues at once (the cell resumes or re-evaluates)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.received: int | None = None
        self._submitit: Any = None
        self._bypass: Any = None

    def __enter__(self) -> "_SignalRelay":
        self._submitit = signal.getsignal(self.signum)
        self._bypass = signal.getsignal(signal.SIGTERM)
        signal.signal(self.signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.signal(self.signum, self._submitit)

    def _handle(self, signum: int, frame: Any) -> None:
        trainer = signal.getsignal(signal.SIGTERM)
        if callable(trainer) and trainer is not self._bypass:  # the trainer's stop_on_sigterm is installed
            self.received = signum
            trainer(signal.SIGTERM, frame)
        elif callable(self._submitit):
            self._submitit(signum, frame)


def submit_cells(executor: Any, jobs: Sequence[CellJob], cluster: str, folder: Path) -> list[Any]:
    """Submit the cells as one job array; write each cell's ``job.json``; return submitit's job handles."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    try:
        with executor.batch():
            handles = [executor.submit(CellTask(job)) for job in jobs]
    except (FailedJobError, FailedSubmissionError) as exc:  # e.g. sbatch: invalid partition, account or QOS
        lines = [x for x in str(exc).splitlines() if x.strip()]
        raise ConfigError(f"the scheduler refused the jobs: {lines[-1] if lines else exc}") from None
    for job, handle in zip(jobs, handles):
        grid_status.record_submission(Path(job.folder), str(handle.job_id), cluster, folder)
    return handles


def wait_for_cells(folders: Sequence[Path], poll_s: float, on_change: Callable[[grid_status.CellStatus], None],
                   handles: Sequence[Any] = (), status: Callable[[Sequence[Path]], list[grid_status.CellStatus]]
                   = grid_status.grid_status) -> list[grid_status.CellStatus]:
    """Poll the cells' states from their folders until none is queued or running; `on_change` sees each cell
    that leaves those states. `handles` (submitit jobs of this process) are polled too, which reaps the local
    executor's finished controllers."""
    reported: set[str] = set()
    while True:
        for handle in handles:
            try:
                handle.done()
            except Exception:  # noqa: BLE001 - a scheduler hiccup: the folder state decides
                pass
        states = status(folders)
        for cell in states:
            if not cell.active and cell.folder not in reported:
                reported.add(cell.folder)
                on_change(cell)
        if not any(cell.active for cell in states):
            return states
        time.sleep(poll_s)
