"""Shared pytest fixtures. Each block belongs to one area; keep additions inside a clearly marked block."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# `make test` runs the files in pytest-xdist workers. Give each worker its share of the cores before torch is
# imported, so that it and the subprocesses the tests start inherit it: OpenMP threads beyond the cores spin
# against each other and make every test slower.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

# The slowest test files, slowest first (measured with `--durations`). `make test` hands whole files to two xdist
# workers (`--dist loadfile`) in collection order; starting with the long ones keeps one worker from running a
# 3-minute file alone at the end while the other idles.
SLOW_FIRST = ("test_distributed.py", "test_ablate_slurm.py", "test_ablate.py", "test_reliability.py",
              "test_check.py", "test_training.py", "test_eval_cli.py", "test_demo.py")


def pytest_collection_modifyitems(session, config, items):
    """Collect the slow files first (see SLOW_FIRST); the order inside a file is kept."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))


# `--precision auto` (every command's default) resolves to bf16 on CPUs with native bf16 and to fp32 elsewhere; the
# suite pins it to fp32 so that it computes the same numbers, at comparable speed, on every CPU. Tests of the
# resolution itself unset this.
os.environ.setdefault("MASKCLIP_AUTO_PRECISION", "fp32")

# ==================================================================================================
# BEGIN training data (tests/test_data_sources.py, test_bad_data.py, test_fuzz_data.py)
# ==================================================================================================

@pytest.fixture(scope="module")
def tokenizer():
    """open_clip's tokenizer of the towers (CLIP's BPE, context 77)."""
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def transform(request):
    """open_clip's training transform at the test module's IMAGE_SIZE (random resized crop, normalisation)."""
    import open_clip

    return open_clip.image_transform(request.module.IMAGE_SIZE, is_train=True)

# ==================================================================================================
# END training data
# ==================================================================================================

# ==================================================================================================
# BEGIN evaluation commands / records / tables (issue 3): one tiny trained checkpoint per session,
# shared by tests/test_eval_cli.py and tests/test_clip_benchmark_agreement.py.
# ==================================================================================================

# Steps of the shared tiny training run; override with MASKCLIP_TEST_TRAIN_STEPS for a better-trained model.
TINY_TRAIN_STEPS = int(os.environ.get("MASKCLIP_TEST_TRAIN_STEPS", "80"))
# The model of the shared checkpoint: the smallest config, which learns colour within those steps in ~10 s on one
# CPU thread (MaskCLIP-Tiny-8 took ~40 s for 30 steps, during which the other xdist worker waited on the lock).
TINY_MODEL = "MaskCLIP-Micro-8"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A `clip` checkpoint of TINY_MODEL trained for a few steps on shapes (batch 32), written once per test
    session: under xdist the first worker that needs it trains it in the session's shared temporary folder while
    the others wait on a file lock and reuse it (the training is the costliest set-up of the suite).

    `clip` rather than `maskclip` because it trains about twice as fast and the evaluation side only
    reads the CLIP towers and the config; the checkpoint has the trainer's full format either way.
    """
    from filelock import FileLock

    if worker_id == "master":  # no xdist: this session's own folder
        return _train_tiny_checkpoint(tmp_path_factory.mktemp("tiny_run"))
    shared = tmp_path_factory.getbasetemp().parent  # this session's folder, common to its xdist workers
    with FileLock(str(shared / "tiny_run.lock")):
        path = shared / "tiny_run" / "checkpoints" / "last.pt"
        return path if path.is_file() else _train_tiny_checkpoint(shared / "tiny_run")


def _train_tiny_checkpoint(out: Path) -> Path:
    import torch

    from maskclip_core.config import TrainConfig
    from maskclip_core.trainer import train

    cfg = TrainConfig.from_dict({
        "model": {"name": TINY_MODEL},
        "method": {"name": "clip"},
        "data": {"spec": "shapes", "workers": 0},
        "optim": {"lr": 1e-3, "warmup": 5},
        # One thread: on a shared 2-core machine two threads spin against other processes.
        "run": {"steps": TINY_TRAIN_STEPS, "batch_size": 32, "seed": 0, "out": str(out), "threads": 1,
                "log_every": 10, "checkpoint_every": 10_000},
    })
    threads = torch.get_num_threads()
    try:
        result = train(cfg)
    finally:
        torch.set_num_threads(threads)  # the trainer sets it process-wide; other tests keep theirs
    path = Path(result.out_dir) / "checkpoints" / "last.pt"
    assert path.is_file()
    return path


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (what the CLI's --threads 1 sets), restoring the count after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



@pytest.fixture
def eval_cli(capsys, one_thread):
    """Run `maskclip-bench ARGS` in-process, as the console script does; returns (exit code, stdout, stderr)."""
    from maskclip_bench.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        out = capsys.readouterr()
        code = exit_info.value.code
        return (0 if code is None else int(code)), out.out, out.err

    return run

# ==================================================================================================
# END evaluation commands / records / tables (issue 3)
# ==================================================================================================

# ==================================================================================================
# BEGIN per-sample metadata in webdataset copies (tests/test_worst_group.py, test_standard_suites.py)
# ==================================================================================================


@pytest.fixture(scope="session")
def write_npy_metadata():
    """The function `_write_npy_metadata`."""
    return _write_npy_metadata


def _write_npy_metadata(wds_dir: Path, rows: list[list[int]], split: str = "test") -> None:
    """Give the samples of a wds split an ``npy`` metadata member each (`rows[i]` for the i-th sample in shard
    order), written right after the sample's ``cls`` as DataComp's copies hold it: the tars are rewritten."""
    import io
    import tarfile

    import numpy as np

    shards = sorted((wds_dir / split).glob("*.tar"), key=lambda p: int(p.stem))
    row = iter(rows)
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar if m.isreg()]
        with tarfile.open(shard, "w") as out:
            for member, data in members:
                out.addfile(member, io.BytesIO(data))
                if member.name.endswith(".cls"):
                    buffer = io.BytesIO()
                    np.save(buffer, np.asarray(next(row), dtype=np.int64))
                    info = tarfile.TarInfo(member.name[:-len("cls")] + "npy")
                    info.size = buffer.tell()
                    out.addfile(info, io.BytesIO(buffer.getvalue()))
    assert next(row, None) is None, "more metadata rows than samples"

# ==================================================================================================
# END per-sample metadata in webdataset copies
# ==================================================================================================
