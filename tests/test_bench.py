"""`maskclip-bench bench` and `maskclip_bench.perf.throughput`: the perf.md file (rows, ratios, per-device sections, GPU rows
never estimated), and that the open_clip reference step computes the same loss as our clip step (like for like).

Tiny settings throughout (batch 4, one step, one thread): these check the measuring code, not the numbers.
"""
from __future__ import annotations

import mmap

import pytest
import torch

from maskclip_bench.perf import throughput as perf

MODEL = "MaskCLIP-Micro-8"  # the smallest towers: the bench mechanics, not its numbers, are tested
TINY = ["--model", MODEL, "--batch-size", "4", "--steps", "1", "--threads", "1"]


def run_bench(args):
    from typer.testing import CliRunner

    from maskclip_bench.cli import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, ["bench", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def perf_md(tmp_path_factory):
    """One fp32 run of all four variants on the CPU, then a bf16 run of two of them into the same file."""
    out = tmp_path_factory.mktemp("bench") / "perf.md"
    threads = torch.get_num_threads()
    first = run_bench([*TINY, "--warmup", "1", "--precision", "fp32", "--device", "cpu", "--out", str(out)])
    assert first.exit_code == 0, first.output
    after_first = out.read_text()
    second = run_bench([*TINY, "--warmup", "0", "--precision", "bf16", "--device", "cpu",
                        "--variants", "open_clip,clip", "--rounds", "2", "--out", str(out)])
    assert second.exit_code == 0, second.output
    assert torch.get_num_threads() == threads  # --threads is restored for the rest of the process
    return after_first, out.read_text(), first.output


def section(text: str, device_type: str, precision: str, model: str = MODEL) -> str:
    found = [body for key, body in perf.parse_sections(text).items()
             if key.split("|")[0] == device_type and key.split("|")[2] == model and key.split("|")[3] == precision]
    assert len(found) == 1, list(perf.parse_sections(text))
    return found[0]


def test_bench_writes_variant_rows_ratios_and_command(perf_md):
    text, _, stdout = perf_md
    cpu = section(text, "cpu", "fp32")
    rows = [line for line in cpu.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    assert [row.split("|")[1].strip() for row in rows] == list(perf.DEFAULT_VARIANTS)
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[1]) > 0 and float(cells[2].replace(",", "")) > 0, row  # s/step, samples/s
        assert float(cells[4].replace(",", "")) > 0 and "(CPU)" in cells[6], row  # GFLOPs counted; no MFU on CPU
    for name in ("our clip / open_clip step time", "maskclip / clip step time", "masked-view / clip step time"):
        (line,) = [line for line in cpu.splitlines() if line.startswith(f"- {name}: ")]
        assert line.endswith(": met") or line.endswith(": NOT met"), line
        assert name in stdout  # the printed table carries the ratios too
    assert "- Command: `maskclip-bench bench --model MaskCLIP-Micro-8 --batch-size 4 --precision fp32 " \
           "--device cpu --steps 1 --warmup 1 --threads 1" in cpu
    assert f"torch {torch.__version__}" in cpu and "torch threads: 1" in cpu and "date: " in cpu
    assert "peak RSS" in cpu and "VmHWM" in cpu  # the CPU memory method is named


def test_gpu_sections_are_not_measured_on_this_cpu_machine(perf_md):
    text, _, _ = perf_md
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for model in (MODEL, perf.GPU_REFERENCE_MODEL):
        gpu = section(text, "cuda", "bf16", model)
        rows = [line for line in gpu.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
        assert len(rows) == 4 and all(perf.NO_GPU in row for row in rows)
        assert not any(ch.isdigit() for row in rows for ch in row.split("|")[2])  # nothing estimated
        assert "met" not in gpu.replace("measured", "")


def test_second_precision_keeps_the_first_section(perf_md):
    first, text, _ = perf_md
    assert section(text, "cpu", "fp32") == section(first, "cpu", "fp32")
    bf16 = section(text, "cpu", "bf16")
    assert "| open_clip |" in bf16 and "| clip |" in bf16 and "| maskclip |" not in bf16
    assert "maskclip / clip step time: not measured (maskclip not in this run" in bf16
    assert text.count("<!-- perf-section: ") == 4  # cpu fp32, cpu bf16, two CUDA placeholders: nothing duplicated


def test_rounds_alternate_the_variants_and_pool_their_steps(perf_md):
    _, both, stdout = perf_md
    bf16 = section(both, "cpu", "bf16")
    assert "--rounds 2" in bf16 and "2 rounds of 0 warm-up + 1 timed step(s) per variant" in bf16
    # By hand: two rounds of one variant; the median is over all four steps, memory the higher peak, FLOPs counted
    # once (in the first round), an error of any round kept.
    first = perf.VariantResult("clip", 8, step_times=[1.0, 3.0], peak_bytes=100, flops=7)
    second = perf.VariantResult("clip", 8, step_times=[2.0, 10.0], peak_bytes=300)
    merged = perf.merge_rounds([first, second])
    assert merged.step_times == [1.0, 3.0, 2.0, 10.0] and merged.seconds == 2.5
    assert merged.peak_bytes == 300 and merged.flops == 7 and merged.ok
    failed = perf.merge_rounds([first, perf.VariantResult("clip", 8, error="OOM")])
    assert failed.error == "OOM" and not failed.ok


def test_rerun_replaces_only_its_own_section_and_a_gpu_run_replaces_the_placeholder():
    existing = perf.merge_sections("", {"cpu|X|M|fp32": "<!-- perf-section: cpu|X|M|fp32 -->\nold cpu\n"},
                                   "cpu", ["M"])
    assert "cuda|-|M|bf16" in perf.parse_sections(existing)
    gpu = perf.merge_sections(existing, {"cuda|NVIDIA H200|M|bf16": "<!-- perf-section: cuda|NVIDIA H200|M|bf16 -->"
                                                                    "\ngpu rows\n"}, "cuda", ["M"])
    assert list(perf.parse_sections(gpu)) == ["cpu|X|M|fp32", "cuda|NVIDIA H200|M|bf16"]
    again = perf.merge_sections(gpu, {"cpu|X|M|fp32": "<!-- perf-section: cpu|X|M|fp32 -->\nnew cpu\n"}, "cpu", ["M"])
    assert "new cpu" in again and "old cpu" not in again and "gpu rows" in again
    assert "cuda|-|M|bf16" not in perf.parse_sections(again)  # a measured GPU section needs no placeholder


def test_peak_table_and_ratio_verdicts():
    assert perf.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989
    assert perf.peak_bf16_tflops("NVIDIA H100 PCIe") == 756
    assert perf.peak_bf16_tflops("NVIDIA H200") == 989
    assert perf.peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert perf.peak_bf16_tflops("NVIDIA L4") == 121 and perf.peak_bf16_tflops("NVIDIA L40S") == 362
    assert perf.peak_bf16_tflops("Tesla V100-SXM2-16GB") is None
    results = {v: perf.VariantResult(v, 8, step_times=[t]) for v, t in
               (("open_clip", 1.0), ("clip", 0.99), ("maskclip", 1.6), ("maskclip-masked-view", 0.9))}
    lines = [r.line() for r in perf.ratios(results)]
    assert lines[0].endswith(": met") and lines[1].endswith(": NOT met") and lines[2].endswith(": met")
    # With the best settings the target is 1.25x faster than open_clip: 0.99x is not enough, 0.8x is.
    best = [r.line() for r in perf.ratios(results, best_settings=True)]
    assert "best settings" in best[0] and best[0].endswith(": NOT met") and best[1:] == lines[1:]
    results["clip"] = perf.VariantResult("clip", 8, step_times=[0.8])
    assert perf.ratios(results, best_settings=True)[0].met and perf.ratios(results)[0].met
    results["clip"] = perf.VariantResult("clip", 8, step_times=[1.01])  # 1 % slower than open_clip: not met
    assert not perf.ratios(results)[0].met


def test_user_errors_are_one_line_with_exit_2(capsys):
    from maskclip_bench.cli import main

    cases = [(["--variants", "clip,nope"], "unknown variant 'nope'"), (["--precision", "fp16"], "unknown precision"),
             (["--model", "MaskCLIP-Tiny-9"], "unknown model"), (["--rounds", "0"], "--rounds must be >= 1"),
             (["--breakdown", "--loop-workers", "-1"], "--loop-workers must be >= 0")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA device"))
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["bench", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err


def test_open_clip_reference_and_our_clip_compute_the_same_loss(one_thread):
    """Same batch, same initial weights (our clip's state dict copied into the open_clip model), fp32: the two
    steps' losses agree to 1e-5, and so do the weights after the optimizer step (same groups, same AdamW)."""
    images, text = perf.make_batch(MODEL, 4, torch.device("cpu"), seed=1)
    ours = perf.build_step("clip", MODEL, images, text, "fp32", seed=3)
    reference = perf.build_step("open_clip", MODEL, images, text, "fp32",
                                clip_state=ours.model.clip.state_dict())
    assert reference.num_params == ours.num_params
    assert [len(g["params"]) for g in reference.optimizer.param_groups] == \
           [len(g["params"]) for g in ours.optimizer.param_groups]
    loss_ours, loss_ref = float(ours()), float(reference())
    assert loss_ours == pytest.approx(loss_ref, abs=1e-5)
    after_ref = reference.model.state_dict()
    for name, value in ours.model.clip.state_dict().items():
        torch.testing.assert_close(value, after_ref[name], atol=1e-5, rtol=1e-4, msg=name)


# --- issue 15: cost breakdown, peak memory, largest batch ------------------------------------------------------------

@pytest.mark.parametrize("variant", ["maskclip", "maskclip-masked-view-mlm-half"])
def test_breakdown_parts_cover_the_step_flops(variant, one_thread):
    """The parts, each run alone, add up to the whole step's FLOPs: what is left (the loss matmuls) is tiny. A part
    left out (e.g. the teacher forward), counted twice, or run on more rows than the step runs it (the MLM pass of
    mlm_fraction < 1) shows as a large remainder."""
    from maskclip_bench.perf import cost_breakdown

    images, text = perf.make_batch(MODEL, 8, torch.device("cpu"), seed=1)
    costs = {c.part: c for c in cost_breakdown.measure_breakdown(variant, MODEL, images, text, "fp32", repeats=1)}
    whole, rest = costs[cost_breakdown.WHOLE_STEP], costs[cost_breakdown.REST]
    assert whole.flops > 0 and abs(rest.flops) < 0.01 * whole.flops, (rest.flops, whole.flops)
    expected = {"mask sampling", "student full image pass", "text pass", "optimizer (grad clip + AdamW)"}
    if variant != "clip":
        expected |= {"student masked image pass", "teacher forward (no grad)", "image decoder", "MLM text pass",
                     "text decoder + vocabulary head", "EMA teacher update"}
    if variant == "maskclip-masked-view-mlm-half":  # no full-image student pass in the masked view
        expected -= {"student full image pass"}
        # MLM on some of the 8 captions (those drawn; seed 1 draws fewer than all): a shorter pass than the text pass
        assert costs["MLM text pass"].flops < costs["text pass"].flops
    assert set(costs) == expected | {cost_breakdown.WHOLE_STEP, cost_breakdown.REST}
    full = costs.get("student full image pass")
    assert full is None or full.flops > costs.get("student masked image pass", costs["text pass"]).flops


def test_the_timed_batch_is_the_first_batch_a_training_run_reads(tmp_path, monkeypatch, one_thread):
    """`bench` times the step on real `shapes` data: the text passes stop at the batch's longest caption, so a
    made-up batch would time a different amount of work than training does."""
    from maskclip_core import trainer
    from maskclip_core.config import TrainConfig

    seen = []

    def capture(batches, *args, **kwargs):
        seen.append(batches[0])
        raise KeyboardInterrupt  # one batch is all this test needs

    monkeypatch.setattr(trainer, "make_step_batch", capture)
    cfg = TrainConfig()
    cfg.model.name, cfg.run.seed, cfg.run.batch_size, cfg.run.steps = MODEL, 3, 4, 1
    cfg.run.out, cfg.run.device, cfg.data.workers = str(tmp_path / "run"), "cpu", 0
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg)

    images, text = perf.make_batch(MODEL, 4, torch.device("cpu"), seed=3)
    assert torch.equal(images, seen[0]["image"]) and torch.equal(text, seen[0]["text"])
    assert len({tuple(t.tolist()) for t in text}) == 4  # four different captions, not one repeated


def test_training_loop_reports_data_wait(tmp_path, one_thread):
    from maskclip_bench.perf import cost_breakdown

    loop = cost_breakdown.measure_training_loop("clip", MODEL, 4, "fp32", steps=2, window=1, workers=0)
    assert loop.samples_per_s > 0 and 0.0 <= loop.data_wait_fraction < 1.0


def test_training_loop_samples_per_s_is_the_median_step_interval_after_the_first_window(monkeypatch):
    from maskclip_bench.perf import cost_breakdown

    clock = {"now": 0.0}
    monkeypatch.setattr(cost_breakdown.time, "perf_counter", lambda: clock["now"])

    def fake_train(cfg, on_log, on_step):
        for now in (0.0, 1.0, 3.0, 4.0, 6.0):  # step ends; the first window (2 steps) ends at 1.0
            clock["now"] = now
            on_step(0, 5)
        on_log({"samples_per_s": 3.0, "data_wait_fraction": 0.25})

    monkeypatch.setattr(cost_breakdown, "train", fake_train)
    loop = cost_breakdown.measure_training_loop("clip", MODEL, 4, "fp32", steps=5, window=2)
    # intervals after the first window: 3-1, 4-3, 6-4 = 2, 1, 2 s; median 2 s; batch 4 -> 2 samples/s
    assert loop.samples_per_s == 2.0 and loop.window_samples_per_s == 3.0 and loop.data_wait_fraction == 0.25


def test_data_prep_is_the_median_read_time_after_a_warm_up_read(monkeypatch):
    from maskclip_bench.perf import cost_breakdown

    clock = {"now": 0.0}
    reads = iter([100.0, 1.0, 3.0, 2.0, 5.0])  # seconds each read takes; the first is the warm-up

    def read():
        clock["now"] += next(reads)

    monkeypatch.setattr(cost_breakdown.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(perf, "train_stream", lambda *a, **k: iter(read, "never"))
    # reads after the warm-up: 1, 3, 2, 5 s; median (2 + 3) / 2
    assert cost_breakdown.measure_data_prep(MODEL, 4, batches=4) == 2.5


def test_loop_lines_give_the_batch_read_as_a_share_of_the_step():
    from maskclip_bench.perf.cost_breakdown import WHOLE_STEP, LoopResult, PartCost, render_breakdown

    tables = {"clip": [PartCost(WHOLE_STEP, 0, 0.5)]}
    loops = {"clip": LoopResult(samples_per_s=60.0, data_wait_fraction=0.01, steps=8, batch_size=64)}
    md = render_breakdown(MODEL, "fp32", 64, tables, "cmd", loops, step_only={"clip": 64.0}, data_seconds=0.1,
                          cores=2)
    # bench: 64 samples/s at batch 64 = 1 s a step; a 0.1 s read is 10 % of it; 60 / 64 = 0.9375 < 0.95
    assert "trainer / bench step-only samples/s: 0.938 (target: >= 0.95): NOT met" in md
    assert "reading its batch costs 10.0 % of the step" in md
    assert "takes 100.0 ms" in md and "same 2 CPU core(s)" in md and "`shapes`, 1 loader worker(s)" in md
    loops["clip"].workers = 2
    assert "`shapes`, 2 loader worker(s)" in render_breakdown(MODEL, "fp32", 64, tables, "cmd", loops)


def test_loop_workers_reach_the_training_run(monkeypatch):
    from rich.console import Console

    from maskclip_bench.commands import bench_cmd
    from maskclip_bench.perf import cost_breakdown
    from maskclip_bench.perf.cost_breakdown import WHOLE_STEP, LoopResult, PartCost

    seen = {}

    def loop(*args, **kwargs):
        seen.update(kwargs)
        return LoopResult(60.0, 0.01, 8, 64, workers=kwargs["workers"])

    monkeypatch.setattr(cost_breakdown, "measure_breakdown", lambda *a, **k: [PartCost(WHOLE_STEP, 0, 0.5)])
    monkeypatch.setattr(cost_breakdown, "measure_training_loop", loop)
    monkeypatch.setattr(cost_breakdown, "measure_data_prep", lambda *a, **k: 0.1)
    md = bench_cmd.run_breakdown(Console(quiet=True), MODEL, torch.zeros(64, 1), torch.zeros(64, 1), "fp32", ["clip"],
                                 8, 3, "cmd", {}, {"clip": 64.0})
    assert seen["workers"] == 3 and seen["steps"] == 8 and "`shapes`, 3 loader worker(s)" in md


def test_largest_fitting_batch_equals_a_brute_force_scan():
    from maskclip_bench.perf.memory import largest_fitting

    for threshold in [1, 2, 3, 5, 8, 13, 64, 65, 100, 1000, 5000]:
        fits = lambda b, t=threshold: b <= t  # noqa: E731
        brute = max((b for b in range(2, 4097) if fits(b)), default=None)
        best, probes = largest_fitting(fits, 2, 4096)
        assert best == brute, threshold
        assert probes <= 2 * 12 + 1  # doubling then bisection: logarithmic


def test_peak_rss_resets_per_variant():
    from maskclip_bench.perf import memory

    if not memory.reset_peak_rss():
        pytest.skip("this kernel does not let a process reset its peak RSS")
    # Reset first: an earlier test in this worker may have left a peak far above today's resident set.
    low = memory.peak_rss_bytes()
    # A fresh anonymous mapping, written through: a tensor of this size may reuse heap pages that are already
    # resident (CI saw the peak not move at all), a new mapping cannot.
    block = mmap.mmap(-1, 64 * 2**20)
    for _ in range(64):
        block.write(b"\x01" * 2**20)
    high = memory.peak_rss_bytes()
    assert high > low + 48 * 2**20
    block.close()
    assert memory.reset_peak_rss()
    assert memory.peak_rss_bytes() < high - 32 * 2**20


def test_max_batch_probe_in_a_subprocess_respects_the_budget():
    from maskclip_bench.perf import memory

    probe = memory.run_probe("clip", MODEL, 2, "fp32", "cpu", 64 * 2**20)  # torch alone needs more than 64 MiB
    assert not probe.fits and probe.reason in ("resident set passed the budget", "peak above the budget"), probe


def test_max_batch_needs_a_budget(capsys):
    from maskclip_bench.cli import main

    for args, message in ((["--max-batch"], "--max-batch needs --memory-gb"),
                          (["--memory-gb", "4"], "add --max-batch")):
        with pytest.raises(SystemExit) as exit_info:
            main(["bench", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err
