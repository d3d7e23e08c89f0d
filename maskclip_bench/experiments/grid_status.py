"""The state of each cell of an ablation grid, read from the grid folder alone (either launcher).

A cell folder holds, besides the trainer's files: ``job.json`` (written by the submitter when the cell was
sent to a scheduler: job id, submitit folder, cluster, host), ``attempt.json`` (written by the process that
trains the cell each time it starts: pid, host, job id, the step it started from) and, at the end, ``cell.json``
(finished) or ``error.txt`` (failed, or stopped by a signal). From these, and from the scheduler when it can be
asked (``sacct`` on SLURM, the controller's pid for submitit's local executor), a cell is one of:

``finished`` · ``queued`` · ``running`` · ``failed`` · ``stopped`` (checkpointed by a signal and not requeued:
a rerun resumes it) · ``pending`` (never started).
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from maskclip_core.atomic_write import write_text_atomic

JOB_FILE = "job.json"
ATTEMPT_FILE = "attempt.json"
CELL_MARKER = "cell.json"  # written last by a finished cell (maskclip_bench.experiments.ablate)
CELL_ERROR = "error.txt"
ACTIVE = ("queued", "running")
# SLURM states (sacct) of a job that still holds, or will again hold, the cell.
_SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING"}
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}


@dataclass
class CellStatus:
    """What `--status` shows for one cell."""

    folder: str
    state: str
    job_id: str = ""
    step: int | None = None
    total: int | None = None
    note: str = ""

    @property
    def active(self) -> bool:
        """Queued or running: a rerun must wait for it, never submit it again."""
        return self.state in ACTIVE


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one (cell markers too)."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def record_submission(folder: Path, job_id: str, cluster: str, submitit_folder: Path) -> None:
    """Note in the cell folder which scheduler job now holds the cell (before it can start)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / JOB_FILE, {"job_id": job_id, "cluster": cluster, "submitit_folder":
                                          str(submitit_folder), "host": socket.gethostname(),
                                          "submitted_at": time.time()})


def record_attempt(folder: Path, job_id: str = "") -> None:
    """Note that this process starts (or resumes) training the cell; keeps a history of the starts."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = _read_json(folder / ATTEMPT_FILE) or {}
    history = list(previous.get("history", []))
    history.append({"job_id": job_id, "pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time(),
                    "from_step": last_logged_step(folder) or 0})
    write_json_atomic(folder / ATTEMPT_FILE, {**history[-1], "history": history})


def last_logged_step(folder: Path) -> int | None:
    """Step of the last line of the cell's metrics.jsonl (None before the first log)."""
    path = folder / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a line being written
    return None


def _total_steps(folder: Path) -> int | None:
    config = _read_json(folder / "config.json")
    steps = (config or {}).get("run", {}).get("steps")
    return int(steps) if isinstance(steps, int) else None


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is alive (a zombie, exited but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def submitit_result(job: dict[str, Any]) -> tuple[str, str] | None:
    """(outcome, message) from submitit's result pickle of the job's rank 0, or None while it has none."""
    path = Path(job["submitit_folder"].replace("%j", job["job_id"])) / f"{job['job_id']}_0_result.pkl"
    if not path.is_file():
        return None
    try:
        outcome, value = pickle.loads(path.read_bytes())
    except Exception:  # noqa: BLE001 - an unreadable result still means the job ended
        return "error", "unreadable submitit result"
    if outcome == "error":
        lines = [x for x in str(value).splitlines() if x.strip()]
        return "error", lines[-1] if lines else "error"
    return "success", ""


def slurm_states(job_ids: Sequence[str]) -> dict[str, str]:
    """{job id: SLURM state} through submitit's sacct reader; empty when sacct cannot be asked."""
    if not job_ids:
        return {}
    try:
        import subprocess

        from submitit.slurm.slurm import SlurmInfoWatcher

        watcher = SlurmInfoWatcher()
        for job_id in job_ids:
            watcher.register_job(job_id)
        command = watcher._make_command()  # sacct -o JobID,State,NodeList --parsable2 -j ...
        if command is None:
            return {}
        output = subprocess.run(command, capture_output=True, check=True, timeout=60).stdout
        info = watcher.read_info(output)
    except Exception:  # noqa: BLE001 - no submitit, no sacct, sacct down: fall back on the files
        return {}
    return {job_id: info[job_id]["State"].split()[0] for job_id in job_ids if job_id in info}


def _job_activity(job: dict[str, Any], attempt: dict[str, Any] | None, states: dict[str, str]) -> tuple[str, str]:
    """("queued" | "running" | "ended" | "unknown", scheduler state) of the job recorded in job.json."""
    job_id = str(job.get("job_id", ""))
    started = attempt is not None and str(attempt.get("job_id")) == job_id
    if job.get("cluster") in ("local", "debug"):
        if job.get("host") != socket.gethostname():
            return "unknown", ""
        if not job_id.isdigit() or not pid_alive(int(job_id)):  # the local job id is its controller's pid
            return "ended", ""
        return ("running" if started else "queued"), ""
    state = states.get(job_id, "")
    if state in _SLURM_QUEUED:
        return "queued", state
    if state in _SLURM_RUNNING:
        return "running", state
    if state:
        return "ended", state
    if submitit_result(job) is not None:
        return "ended", ""
    return ("running" if started else "queued"), ""  # sacct unavailable: no result yet, so still held


def cell_status(folder: Path, states: dict[str, str] | None = None) -> CellStatus:
    """State of one cell folder; `states` are scheduler states already looked up ({job id: state})."""
    job = _read_json(folder / JOB_FILE)
    attempt = _read_json(folder / ATTEMPT_FILE)
    job_id = str(job.get("job_id", "")) if job else ""
    status = CellStatus(str(folder), "pending", job_id, last_logged_step(folder), _total_steps(folder))
    if (folder / CELL_MARKER).is_file():
        status.state = "finished"
        return status
    activity, scheduler_state = _job_activity(job, attempt, states or {}) if job else ("ended", "")
    if activity in ACTIVE:
        status.state, status.note = activity, scheduler_state
        return status
    error = folder / CELL_ERROR
    if error.is_file():
        lines = [x for x in error.read_text().splitlines() if x.strip()]
        status.note = lines[-1] if lines else ""
        status.state = "stopped" if status.note.startswith("InterruptedError") else "failed"
        return status
    if job and activity == "ended":
        result = submitit_result(job)
        status.state = "failed"
        status.note = (result[1] if result else "") or f"job ended without a result{f' ({scheduler_state})' if scheduler_state else ''}"
        return status
    if job and activity == "unknown":
        status.state, status.note = "running", "submitted from another host; state not checked"
        return status
    pid = int(attempt.get("pid", 0)) if attempt else 0
    if attempt and attempt.get("host") == socket.gethostname() and pid != os.getpid() and pid_alive(pid):
        status.state = "running"  # --launcher local, in another process (this one is not training it now)
    elif (folder / "checkpoints" / "last.pt").is_file():
        status.state = "stopped"
    return status


def cell_folders(root: Path) -> list[Path]:
    """Every cell folder (``.../seed=<n>``) under a grid folder."""
    return sorted(p for p in root.glob("**/seed=*") if p.is_dir()) if root.is_dir() else []


def grid_status(folders: Sequence[Path], ask_scheduler: Callable[[Sequence[str]], dict[str, str]] = slurm_states,
                ) -> list[CellStatus]:
    """Status of each cell folder; SLURM cells' states are asked for in one sacct call."""
    slurm_ids = []
    for folder in folders:
        job = _read_json(folder / JOB_FILE)
        if job and job.get("cluster") not in ("local", "debug") and not (folder / "cell.json").is_file():
            slurm_ids.append(str(job["job_id"]))
    states = ask_scheduler(slurm_ids) if slurm_ids else {}
    return [cell_status(folder, states) for folder in folders]
