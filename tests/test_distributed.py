"""Data-parallel training is the single-process run: two gloo ranks with batch B equal one process with batch 2B
(weights, teacher, every logged loss) with the DEFAULT settings (gather_with_grad on), gradient accumulation equals
the larger batch, and a 2-rank run with the cost schedules killed and resumed ends where the uninterrupted single
process does. CPU only, torchrun in subprocesses."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runner import invoke_cli

from maskclip_core.checkpoint import load_checkpoint
from maskclip_core.runlog import read_metrics

STEPS, B = 3, 4
# Adam eps 1e-6 (not 1e-8): the attention key bias has an exactly-zero true gradient, so its gradient is rounding
# noise (~1e-10) whose value depends on the summation order; with eps 1e-8 Adam turns that noise into lr-sized
# steps that differ between any two batch splits. With 1e-6 the noise stays noise and the comparison is of the
# computation, not of the rounding.
LOGGED = ("loss", "loss_contrastive", "loss_distill", "loss_mlm", "logit_scale", "lr", "samples_read")
COMMON = ["--steps", str(STEPS), "--quiet", "--data", "shapes:difficulty=0.3", "--model", "MaskCLIP-Micro-8",
          "--set", "workers=0", "--set", "threads=1", "--set", "log_every=1", "--set", "warmup=1",
          "--set", "lr=5e-4", "--set", "eps=1e-6", "--precision", "fp32"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(fault: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MASKCLIP_FAULT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    if fault:
        env["MASKCLIP_FAULT"] = fault
    return env


def _train(out: Path, method: str, batch: int, ranks: int = 1, extra: tuple = (), resume: bool = False,
           fault: str | None = None) -> subprocess.CompletedProcess:
    """One training run: torchrun in a subprocess for several ranks or a fault; a single clean process runs here
    (its result is the same, without a second interpreter importing torch and open_clip)."""
    args = ["train", "--method", method, "--batch-size", str(batch), "--out", str(out), *COMMON, *extra]
    if resume:
        args.append("--resume")
    if ranks == 1 and fault is None:
        result = invoke_cli(args)
        return subprocess.CompletedProcess(args, result.exit_code, result.output, result.output)
    if ranks == 1:
        cmd = [sys.executable, "-m", "maskclip_bench", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "maskclip_bench", *args]
    return subprocess.run(cmd, env=_env(fault), capture_output=True, text=True, timeout=900)


def _assert_close_runs(a: Path, b: Path, tol: float = 1e-5) -> None:
    sa, sb = load_checkpoint(a / "checkpoints" / "last.pt"), load_checkpoint(b / "checkpoints" / "last.pt")
    assert sa["step"] == sb["step"] == STEPS
    for part in ("clip", "extras", "teacher"):
        if sa[part] is None:
            assert sb[part] is None
            continue
        for k, v in sa[part].items():
            assert torch.allclose(v.float(), sb[part][k].float(), atol=tol, rtol=0), (part, k,
                                                                                      (v - sb[part][k]).abs().max())
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, STEPS + 1))
    for x, y in zip(ra, rb):
        for key in LOGGED:
            if x[key] is None:
                assert y[key] is None, key
            else:
                assert abs(x[key] - y[key]) <= tol * max(1.0, abs(x[key])), (x["step"], key, x[key], y[key])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with batch 2B and two ranks with batch B each, for clip and maskclip."""
    root = tmp_path_factory.mktemp("ddp")
    done = {}
    for method in ("clip", "maskclip"):
        for ranks, batch in ((1, 2 * B), (2, B)):
            out = root / f"{method}-{ranks}"
            result = _train(out, method, batch, ranks)
            assert result.returncode == 0, result.stderr[-3000:]
            done[(method, ranks)] = out
    return done


@pytest.mark.parametrize("method", ["clip", "maskclip"])
def test_two_ranks_equal_one_process_with_the_global_batch(runs, method):
    _assert_close_runs(runs[(method, 1)], runs[(method, 2)])


def test_only_rank_zero_writes(runs):
    out = runs[("maskclip", 2)]
    assert len(read_metrics(out / "metrics.jsonl")) == STEPS  # not once per rank
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*.pt")) == ["step_00000003.pt"]


def test_gradient_accumulation_equals_the_larger_batch(runs, tmp_path):
    out = tmp_path / "accum"
    result = _train(out, "maskclip", B, extra=("--set", "accum_freq=2"))
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_close_runs(runs[("maskclip", 1)], out)


def test_rank_slices_of_a_global_batch_are_the_single_process_batch():
    """Each rank reads its slice of every global batch: together, in rank order, exactly the batches one process
    with the global batch reads, and every rank the same number of samples."""
    from maskclip_core.loader import EpochPermutationSampler

    size, b, world = 103, 4, 3
    single = [i for _, i in EpochPermutationSampler(size, 7, 2, batch_size=b * world)]
    ranks = [[i for _, i in EpochPermutationSampler(size, 7, 2, batch_size=b, rank=r, world_size=world)]
             for r in range(world)]
    assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) == size // (b * world) * b
    glob = b * world
    for step in range(size // glob):
        merged = [i for r in ranks for i in r[step * b:(step + 1) * b]]
        assert merged == single[step * glob:(step + 1) * glob]
    # Resuming at batch 5 of the epoch starts at the same place for every rank.
    late = [i for _, i in EpochPermutationSampler(size, 7, 2, 5 * b, batch_size=b, rank=1, world_size=world)]
    assert late == ranks[1][5 * b:]


def test_gather_with_grad_off_on_several_ranks_says_what_it_does_to_the_weights(caplog):
    import logging

    from maskclip_core.config import TrainConfig
    from maskclip_core.distributed import DistEnv
    from maskclip_core.trainer import resolve_for_device

    cfg = TrainConfig()
    assert cfg.method.gather_with_grad  # the default is the single-process objective
    cfg.method.gather_with_grad = False
    with caplog.at_level(logging.WARNING):
        resolve_for_device(cfg, DistEnv(rank=0, world_size=8))
    assert "w_distill and w_mlm act 8 times larger" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resolve_for_device(TrainConfig(), DistEnv(rank=0, world_size=8))
    assert "larger" not in caplog.text


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_minimal_pair_groups_stay_whole_in_every_rank_slice(world):
    """With groups of 4 and a global batch of 32, every world size that leaves a per-rank batch divisible by 4 gets
    each group whole inside one rank's slice, and the ranks together still read the single-process batches."""
    from maskclip_core.loader import EpochPermutationSampler

    size, group, glob = 4 * 50 + 3, 4, 32  # 50 groups and a tail of 3 that forms no group
    b = glob // world
    single = [i for _, i in EpochPermutationSampler(size, 5, 1, batch_size=glob, group=group)]
    # The order is a permutation of whole groups, drawn as the plain sampler draws samples.
    g = torch.Generator().manual_seed(5 * 100_003 + 1)
    expected = [k * group + m for k in torch.randperm(size // group, generator=g).tolist() for m in range(group)]
    assert single == expected
    ranks = [[i for _, i in EpochPermutationSampler(size, 5, 1, batch_size=b, rank=r, world_size=world, group=group)]
             for r in range(world)]
    steps = len(single) // glob
    # One rank reads the whole order (the DataLoader drops the tail); several ranks only full global batches.
    assert all(len(r) == (len(single) if world == 1 else steps * b) for r in ranks)
    for step in range(steps):
        slices = [r[step * b:(step + 1) * b] for r in ranks]
        assert [i for s in slices for i in s] == single[step * glob:(step + 1) * glob]
        for s in slices:
            members = {}
            for i in s:
                members.setdefault(i // group, set()).add(i)
            assert all(len(m) == group for m in members.values())  # every group of the slice is whole
    # Group size 1 is the plain per-sample permutation (the existing order, unchanged).
    g = torch.Generator().manual_seed(5 * 100_003 + 1)
    plain = [i for _, i in EpochPermutationSampler(size, 5, 1, batch_size=glob)]
    assert plain == torch.randperm(size, generator=g).tolist()


def test_batch_stream_reads_the_datasets_groups_and_resumes_at_the_same_place():
    """BatchStream takes the group size from the dataset, so training batches hold whole minimal-pair groups."""
    from maskclip_core.loader import BatchStream

    class Grouped(torch.utils.data.Dataset):
        group_size = 3

        def __len__(self):
            return 60

        def __getitem__(self, i):
            return {"image": torch.zeros(1), "text": torch.tensor([i])}

    stream = BatchStream(Grouped(), 6, seed=2)
    batches = [next(stream)["text"].view(-1).tolist() for _ in range(12)]  # two epochs of 10 batches
    for batch in batches:
        assert sorted(batch) == sorted({i // 3 * 3 + m for i in batch for m in range(3)})
    resumed = BatchStream(Grouped(), 6, seed=2, epoch=1, batch_in_epoch=1)
    assert next(resumed)["text"].view(-1).tolist() == batches[11]


def test_cost_schedules_two_ranks_killed_and_resumed_equal_one_process(tmp_path):
    """distill_start / mlm_start (phases switching on mid-run, DDP finding the unused decoders before), a teacher
    updated every 2 steps and MLM on half of each batch: two ranks with batch B, killed after step 1 and resumed,
    end where one uninterrupted process with batch 2B does."""
    extra = ("--set", "distill_start=0.3", "--set", "mlm_start=0.5", "--set", "teacher_every=2",
             "--set", "mlm_fraction=0.5", "--set", "checkpoint_every=1")
    one = _train(tmp_path / "one", "maskclip", 2 * B, extra=extra)
    assert one.returncode == 0, one.stderr[-3000:]
    rows = read_metrics(tmp_path / "one" / "metrics.jsonl")
    # start_step(0.3, 3) = 1, start_step(0.5, 3) = 2: the terms appear when their phase starts
    assert [r["loss_distill"] is None for r in rows] == [True, False, False]
    assert [r["loss_mlm"] is None for r in rows] == [True, True, False]
    out = tmp_path / "two"
    killed = _train(out, "maskclip", B, ranks=2, extra=extra, fault="train_step@2")
    assert killed.returncode != 0
    resumed = _train(out, "maskclip", B, ranks=2, extra=extra, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_close_runs(tmp_path / "one", out)
