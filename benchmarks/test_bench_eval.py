"""Evaluation speed: our zero-shot vs CLIP_benchmark's, and `eval` with shared/cached features vs separate commands.

Not part of the test suite. Run with
`pytest benchmarks/test_bench_eval.py --benchmark-only` (add `--benchmark-columns=mean,stddev,rounds`).

* `zeroshot` group: images/s of `maskclip_bench.evaluators.evaluate_zeroshot` and of
  `clip_benchmark.metrics.zeroshot_classification.evaluate` on the same random-init MaskCLIP-Tiny-8 and the
  same pre-rendered shapes images (both build the class-prompt classifier and encode every image, fp32, no
  autocast); images/s is in each result's `extra_info`.
* `suite` group: `maskclip-bench eval --suite quick` (zero-shot + retrieval + linear probe, each image set
  encoded once) with an empty cache and with a warm cache, against `zeroshot`, `retrieval` and `linprobe`
  run one after another without the cache.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

MODEL = "MaskCLIP-Tiny-8"
N_IMAGES = 512
SHAPES = "shapes:test=300,train=300,val=100"
# The datasets `eval --suite quick --dataset SHAPES` evaluates, for the one-by-one commands.
SUITE_SPECS = {"zeroshot": "shapes/shape_color:test=300", "retrieval": "shapes/retrieval:test=300",
               "linprobe": "shapes/shape_color:test=300,train=300,val=100"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch/BLAS thread: stable numbers on a shared machine."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zeroshot_setup():
    from maskclip_bench.eval_data import build_eval_dataset
    from maskclip_bench.evaluation.model_loading import eval_transform
    from maskclip_core.towers import create_clip, get_tokenizer

    torch.manual_seed(0)
    model = create_clip(MODEL).eval()
    ds = build_eval_dataset(f"shapes/shape_color:test={N_IMAGES}", transform=eval_transform(model), image_size=64)
    images, labels = next(iter(DataLoader(ds.dataset, batch_size=N_IMAGES, collate_fn=ds.collate_fn)))
    tensors = TensorDataset(images, labels)  # pre-rendered: image rendering is not what is timed
    tensors.classes = ds.classnames  # CLIP_benchmark's evaluate reads dataloader.dataset.classes
    loader = DataLoader(tensors, batch_size=128)
    return model, get_tokenizer(MODEL), loader, ds.classnames, ds.templates


@pytest.mark.benchmark(group="zeroshot")
@pytest.mark.parametrize("implementation", ["maskclip_bench", "clip_benchmark"])
def test_zeroshot_images_per_second(benchmark, zeroshot_setup, implementation):
    from clip_benchmark.metrics import zeroshot_classification

    from maskclip_bench.evaluators import evaluate_zeroshot

    model, tokenizer, loader, classnames, templates = zeroshot_setup
    if implementation == "maskclip_bench":
        def run():
            return evaluate_zeroshot(model, loader, tokenizer, classnames, templates, device="cpu")
    else:
        def run():
            return zeroshot_classification.evaluate(model, loader, tokenizer, classnames, templates, device="cpu",
                                                    amp=False, verbose=False)
    metrics = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = N_IMAGES / benchmark.stats.stats.mean
    benchmark.extra_info["acc1"] = metrics["acc1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random-init MaskCLIP-Tiny-8 in the trainer's checkpoint format (no training needed for timing)."""
    from maskclip_core.checkpoint import save_checkpoint
    from maskclip_core.config import TrainConfig
    from maskclip_core.towers import create_clip

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bench_ckpt") / "random.pt"
    save_checkpoint({"step": 0, "epoch": 0, "batch_in_epoch": 0, "config": TrainConfig().to_dict(),
                     "clip": create_clip(MODEL).state_dict(), "extras": {}, "teacher": None, "optimizer": {},
                     "rng": {}}, path)
    return path


def _cli(*args: object) -> None:
    from maskclip_bench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code in (0, None)


@pytest.mark.benchmark(group="suite")
@pytest.mark.parametrize("mode", ["eval_cold_cache", "eval_warm_cache", "one_by_one_no_cache"])
def test_eval_suite_vs_separate_commands(benchmark, checkpoint, tmp_path, mode):
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    common = ["--ckpt", checkpoint, "--results-dir", runs, "--threads", 1, "--quiet"]
    suite = ["eval", "--suite", "quick", "--dataset", SHAPES, "--cache-dir", cache, *common]

    if mode == "one_by_one_no_cache":
        def run():
            _cli("zeroshot", "--dataset", SUITE_SPECS["zeroshot"], "--no-cache", *common)
            _cli("retrieval", "--dataset", SUITE_SPECS["retrieval"], "--no-cache", *common)
            _cli("linprobe", "--dataset", SUITE_SPECS["linprobe"], "--no-cache", *common)
        setup = None
    elif mode == "eval_cold_cache":
        def run():
            _cli(*suite)

        def setup():
            shutil.rmtree(cache, ignore_errors=True)
    else:
        _cli(*suite)  # fill the cache once

        def run():
            _cli(*suite)
        setup = None
    benchmark.pedantic(run, setup=setup, rounds=2, iterations=1)
