"""`ablate --launcher slurm` (issue 16): sbatch parameters, no double submission, a grid's status read back from
its folder, and cells run as real submitit jobs (submitit's local executor: the same submission and job code as
on SLURM, jobs as local processes), one of them preempted mid-training, requeued, and ending bit-exactly where an
uninterrupted run ends."""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import invoke_cli as _run_cli

from maskclip_bench.experiments import grid_status
from maskclip_core.errors import ConfigError

submitit = pytest.importorskip("submitit")


TINY = ["--batch-size", "8", "--model", "MaskCLIP-Tiny-8", "--data", "shapes", "--set", "workers=0",
        "--set", "log_every=1", "--set", "warmup=1", "--set", "precision=fp32", "--threads", "1", "--quiet",
        "--eval-dataset", "shapes:test=16,train=16,val=16", "--eval-batch-size", "16"]


def test_time_and_extra_parsing():
    from maskclip_bench.experiments.submitit_launcher import parse_extra, parse_time

    # SLURM's formats, by hand: minutes; MM:SS; HH:MM:SS; D-HH; D-HH:MM:SS (seconds round up to a minute).
    assert parse_time("90") == 90
    assert parse_time("0:30") == 1
    assert parse_time("1:30:00") == 90
    assert parse_time("1-2") == 26 * 60
    assert parse_time("2-00:00:01") == 2 * 24 * 60 + 1
    for bad in ("1h", "", "0", "1:2:3:4"):
        with pytest.raises(ConfigError):
            parse_time(bad)
    assert parse_extra(["constraint=a100", "exclusive", "mail-type=END,FAIL"]) == {
        "constraint": "a100", "exclusive": True, "mail-type": "END,FAIL"}
    with pytest.raises(ConfigError):
        parse_extra(["=x"])


def _fake_slurm(tmp_path, monkeypatch):
    """sbatch (keeps each script, answers job 777), srun (only looked for) and sacct (states from a file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "sbatch": 'if grep -q -- "--partition=bad" "$1"; then echo "sbatch: error: invalid partition" >&2; exit 1; fi\n'
                  f'n=$(ls {tmp_path}/sbatch_*.sh 2>/dev/null | wc -l)\ncp "$1" {tmp_path}/sbatch_$n.sh\n'
                  'echo "Submitted batch job 777"\n',
        "srun": "exit 1\n",
        "sacct": f'echo "JobID|State|NodeList"\ncat {tmp_path}/sacct_states 2>/dev/null\n',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return sorted


def test_sbatch_parameters_rendered_and_no_double_submission(tmp_path, monkeypatch):
    _fake_slurm(tmp_path, monkeypatch)
    out = tmp_path / "cells"
    args = ["ablate", "--grid", "decoder_depth", "--values", "0,1,2", "--steps", "3", *TINY, "--out", str(out),
            "--tables", str(tmp_path / "tables"), "--launcher", "slurm", "--nodes", "2", "--gpus-per-node", "4",
            "--partition", "gpu", "--time", "2:00:00", "--account", "proj", "--qos", "high",
            "--slurm-extra", "constraint=a100", "--slurm-extra", "exclusive", "--max-concurrent", "2", "--no-wait"]
    result = _run_cli(args)
    assert result.exit_code == 0, result.output
    (script,) = sorted(tmp_path.glob("sbatch_*.sh"))
    lines = set(script.read_text().splitlines())
    for flag in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--time=120",
                 "--account=proj", "--qos=high", "--constraint=a100", "--exclusive", "--array=0-2%2",
                 "--signal=USR2@90", "--job-name=maskclip-ablate"):
        assert f"#SBATCH {flag}" in lines, flag
    assert "#SBATCH --cpus-per-task=1" in lines  # --threads 1
    assert any(x.startswith("srun ") for x in lines)
    ids = {json.loads((out / f"decoder_depth={d}" / "seed=0" / "job.json").read_text())["job_id"] for d in (0, 1, 2)}
    assert ids == {"777_0", "777_1", "777_2"}

    # Still pending: a rerun submits nothing and (with --no-wait) returns; --status says queued.
    (tmp_path / "sacct_states").write_text("777_[0-2%2]|PENDING|None assigned\n")
    result = _run_cli(args)
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob("sbatch_*.sh"))) == 1 and "3 queued or running" in result.output
    status = _run_cli(["ablate", "--status", "--out", str(out)])
    assert status.exit_code == 0 and status.output.count("queued") >= 3 and "777_1" in status.output

    # One element lost its node: only that cell goes out again, as a job of its own.
    (tmp_path / "sacct_states").write_text("777_0|RUNNING|n1\n777_1|NODE_FAIL|n2\n777_2|PENDING|None\n")
    states = {Path(s.folder).parent.name: s for s in grid_status.grid_status(grid_status.cell_folders(out))}
    assert [states[f"decoder_depth={d}"].state for d in (0, 1, 2)] == ["running", "failed", "queued"]
    assert "NODE_FAIL" in states["decoder_depth=1"].note
    result = _run_cli(args)
    assert result.exit_code == 0, result.output
    second = sorted(tmp_path.glob("sbatch_*.sh"))[1].read_text()
    assert "--array" not in second
    assert json.loads((out / "decoder_depth=1" / "seed=0" / "job.json").read_text())["job_id"] == "777"


def test_cpus_per_task_from_threads_and_user_errors(tmp_path, monkeypatch):
    _fake_slurm(tmp_path, monkeypatch)
    base = ["ablate", "--grid", "decoder_depth", "--values", "0", "--steps", "3", *TINY, "--out",
            str(tmp_path / "c"), "--launcher", "slurm", "--no-wait"]
    result = _run_cli([a if a != "1" else "6" for a in base])  # --threads 6
    assert result.exit_code == 0, result.output
    assert "#SBATCH --cpus-per-task=6" in next(tmp_path.glob("sbatch_*.sh")).read_text()
    with pytest.raises(ConfigError, match="invalid partition"):
        _run_cli([*base[:-3], "--out", str(tmp_path / "e"), "--launcher", "slurm", "--partition", "bad"])
    for bad in (["--time", "1h"], ["--max-concurrent", "0"], ["--slurm-extra", "=1"], ["--launcher", "pbs"]):
        with pytest.raises(ConfigError):
            _run_cli([*base, *bad])
    monkeypatch.setitem(sys.modules, "submitit", None)  # not installed
    with pytest.raises(ConfigError, match=r"maskclip-bench\[slurm\]"):
        _run_cli([*base[:-3], "--out", str(tmp_path / "f"), "--launcher", "slurm"])
    monkeypatch.delitem(sys.modules, "submitit")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="srun"):
        _run_cli([*base[:-3], "--out", str(tmp_path / "d"), "--launcher", "slurm"])


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_status_read_back_from_the_grid_folder(tmp_path):
    root = tmp_path / "grid"
    cell = {name: root / f"mask_ratio={name}" / "seed=0" for name in ("a", "b", "c", "d", "e", "f", "g")}
    _write(cell["a"] / "cell.json", "{}")
    _write(cell["b"] / "error.txt", "Traceback (most recent call last):\nValueError: broken data\n")
    _write(cell["c"] / "checkpoints" / "last.pt", "")
    _write(cell["c"] / "error.txt", "InterruptedError: training stopped at step 4 by SIGTERM\n")
    _write(cell["c"] / "metrics.jsonl", "".join(json.dumps({"step": s}) + "\n" for s in range(1, 5)))
    _write(cell["c"] / "config.json", json.dumps({"run": {"steps": 20}}))
    job = {"cluster": "slurm", "submitit_folder": str(tmp_path / "submitit"), "host": socket.gethostname()}
    _write(cell["d"] / "job.json", json.dumps({**job, "job_id": "5_0"}))
    _write(cell["d"] / "attempt.json", json.dumps({"job_id": "5_0", "pid": 1, "host": "n1"}))
    _write(cell["e"] / "job.json", json.dumps({**job, "job_id": "5_1"}))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write(cell["f"] / "job.json", json.dumps({**job, "cluster": "local", "job_id": str(dead.pid)}))
    _write(cell["g"] / "config.json", "{}")  # never started
    # --launcher local: a cell trained by another live process is running; one this process trained earlier is not.
    here = socket.gethostname()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _write(root / "mask_ratio=h" / "seed=0" / "attempt.json", json.dumps({"pid": other.pid, "host": here}))
    _write(root / "mask_ratio=i" / "seed=0" / "attempt.json", json.dumps({"pid": os.getpid(), "host": here}))
    _write(root / "mask_ratio=i" / "seed=0" / "checkpoints" / "last.pt", "")

    asked = []

    def sacct(ids):
        asked.append(sorted(ids))
        return {"5_0": "RUNNING", "5_1": "PENDING"}

    got = {Path(s.folder).parent.name.split("=")[1]: s for s in grid_status.grid_status(
        grid_status.cell_folders(root), ask_scheduler=sacct)}
    assert asked == [["5_0", "5_1"]]  # one scheduler query for the grid
    other.kill()
    assert {k: v.state for k, v in got.items()} == {"a": "finished", "b": "failed", "c": "stopped", "d": "running",
                                                   "e": "queued", "f": "failed", "g": "pending", "h": "running",
                                                   "i": "stopped"}
    assert got["b"].note == "ValueError: broken data" and (got["c"].step, got["c"].total) == (4, 20)
    assert got["d"].job_id == "5_0" and "without a result" in got["f"].note
    # Without the scheduler (sacct missing), a job with no submitit result yet counts as still held.
    assert grid_status.cell_status(cell["e"]).state == "queued"
    _write(tmp_path / "submitit" / "5_1_0_result.pkl", "")
    assert grid_status.cell_status(cell["e"]).state == "failed"
    shown = _run_cli(["ablate", "--status", "--out", str(root)])
    assert shown.exit_code == 0 and "4/20" in shown.output and "broken data" in shown.output


def test_submitit_is_imported_only_by_the_slurm_launcher():
    code = ("import sys, maskclip_bench.commands.ablate_cmd, maskclip_bench.experiments.ablate, maskclip_bench.experiments.grid_status, "
            "maskclip_bench.experiments.submitit_launcher; assert 'submitit' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    core = Path(__file__).resolve().parents[1] / "maskclip_core"
    assert not [p for p in core.rglob("*.py") if "submitit" in p.read_text()]


def _wait_for(predicate, process, timeout_s=120.0, what=""):
    deadline = time.time() + timeout_s
    while time.time() < deadline and process.poll() is None:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"no {what}: " + (process.communicate()[0] if process.poll() is not None else "timed out"))


def test_local_executor_jobs_preempted_requeued_bit_exact_and_failure_reported(tmp_path):
    """Two cells as submitit jobs: one is sent submitit's preemption signal mid-training, checkpoints, requeues
    and resumes; its weights and losses then equal an uninterrupted run's. The other fails for good (its
    checkpoint is unreadable) and is reported while the first goes on."""
    import torch

    out = tmp_path / "cells"
    steps = 8
    args = ["ablate", "--grid", "decoder_depth", "--values", "0,1", "--steps", str(steps), *TINY, "--out", str(out),
            "--tables", str(tmp_path / "tables"), "--set", "checkpoint_every=1000", "--launcher", "slurm",
            "--submitit-cluster", "local"]
    broken = out / "decoder_depth=1" / "seed=0"
    _write(broken / "checkpoints" / "last.pt", "not a checkpoint")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    grid = subprocess.Popen([sys.executable, "-m", "maskclip_bench", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        cell = out / "decoder_depth=0" / "seed=0"
        first = _wait_for(lambda: json.loads((cell / "attempt.json").read_text()) if (cell / "attempt.json").is_file()
                          else None, grid, what="job start")
        _wait_for(lambda: (grid_status.last_logged_step(cell) or 0) >= 2, grid, what="step 2")
        shown = _run_cli(["ablate", "--status", "--out", str(out)])
        assert "running" in shown.output and first["job_id"] in shown.output
        os.kill(first["pid"], signal.SIGUSR2)  # what SLURM sends (--signal=USR2@90) near a time limit or preemption
        output, _ = grid.communicate(timeout=300)
    finally:
        grid.kill()
    # The grid waited for both jobs, reported the failed cell and wrote the tables from the other.
    assert grid.returncode == 1, output
    assert "failed" in output and "decoder_depth=1" in output, output
    assert "CheckpointError" in (broken / "error.txt").read_text()
    assert (tmp_path / "tables" / "ablation_decoder_depth.md").is_file()
    history = json.loads((cell / "attempt.json").read_text())["history"]
    assert len(history) == 2 and history[0]["job_id"] == history[1]["job_id"]  # requeued: the same job, again
    assert 0 < history[1]["from_step"] < steps
    # It resumed from the checkpoint written when the signal came, not from scratch.
    kept = sorted(int(p.stem.split("_")[1]) for p in (cell / "checkpoints").glob("step_*.pt"))
    assert kept == [history[1]["from_step"], steps]
    marker = json.loads((cell / "cell.json").read_text())
    assert marker["steps"] == steps
    logged = [json.loads(x) for x in (cell / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in logged] == list(range(1, steps + 1))

    # The same cell uninterrupted, in this process.
    from maskclip_core.config import TrainConfig
    from maskclip_core.trainer import train

    cfg = TrainConfig.from_dict(json.loads((cell / "config.json").read_text()))
    cfg.run.out = str(tmp_path / "straight")
    threads = torch.get_num_threads()
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    straight = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in logged] == [x["loss"] for x in straight]
    a = torch.load(cell / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == steps
    for name, tensor in b["clip"].items():
        assert torch.equal(a["clip"][name], tensor), name
