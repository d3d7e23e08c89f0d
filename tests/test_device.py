"""The one device resolver (`pick_device`), the one thread limit (`thread_limit`) and the fp32 switch (`exact_fp32`)."""
from __future__ import annotations

import contextlib

import pytest
import torch

from maskclip_core.distributed import pick_device
from maskclip_core.errors import ConfigError


def test_names_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only answers")
    assert pick_device("auto") == pick_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"device {name} asked for, but torch sees no CUDA device"):
            pick_device(name)


@pytest.mark.parametrize("name", ["mps", "gpu", "cuda:", "cuda:x", "CPU", ""])
def test_unknown_names_are_a_user_error(name):
    with pytest.raises(ConfigError, match="unknown device"):
        pick_device(name)


def test_names_with_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda:0")
    assert pick_device("cuda", local_rank=3) == torch.device("cuda:3")  # torchrun: the local rank's GPU
    assert pick_device("auto", local_rank=2) == torch.device("cuda:2")
    assert pick_device("cuda:1", local_rank=3) == torch.device("cuda:1")  # an explicit index wins
    assert pick_device("cpu", local_rank=3) == torch.device("cpu")


def test_thread_limit_sets_and_restores():
    from threadpoolctl import threadpool_info

    from maskclip_core.thread_limit import thread_limit

    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with thread_limit(target, blas=True):
        assert torch.get_num_threads() == target
        assert all(pool["num_threads"] <= target for pool in threadpool_info())
    assert torch.get_num_threads() == before
    with thread_limit(0):  # 0: leave everything alone
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), thread_limit(target):
        raise RuntimeError("a failing block")
    assert torch.get_num_threads() == before  # restored on the way out of a failure too


@pytest.mark.parametrize("fails", [False, True])
def test_exact_fp32_turns_tf32_off_on_cuda_and_restores_it(fails):
    from maskclip_core.precision import exact_fp32

    switches = torch.backends.cuda.matmul, torch.backends.cudnn
    before = [s.allow_tf32 for s in switches]
    try:
        for s in switches:
            s.allow_tf32 = True  # the flags are plain settings: they can be set without a GPU
        with contextlib.suppress(RuntimeError):
            with exact_fp32("cuda:0"):
                assert [s.allow_tf32 for s in switches] == [False, False]
                if fails:
                    raise RuntimeError("evaluation failed")
        assert [s.allow_tf32 for s in switches] == [True, True]
        with exact_fp32("cpu"):
            assert [s.allow_tf32 for s in switches] == [True, True]  # CPU evaluation changes nothing
    finally:
        for s, value in zip(switches, before):
            s.allow_tf32 = value
