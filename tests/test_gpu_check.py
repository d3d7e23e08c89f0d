"""benchmarks/gpu_check.sh: its CPU-checkable part. `--dry-run` prints every command it would run; each
`maskclip-bench` command line must parse against the real CLI (options exist, values have the right types), and
the script must cover the CUDA paths issue 15 lists."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import typer

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def dry_run(tmp_path: Path) -> dict[str, list[str]]:
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path / "out")], capture_output=True,
                         text=True, check=True).stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    steps = {}
    for line in out.strip().splitlines():
        name, command = line.split(": ", 1)
        steps[name] = shlex.split(command)
    return steps


def cli_args(argv: list[str]) -> list[str]:
    """The arguments after `maskclip-bench` or `torchrun ... -m maskclip_bench`."""
    for i, word in enumerate(argv):
        if word.endswith("maskclip-bench"):
            return argv[i + 1:]
        if word == "maskclip_bench" and argv[i - 1] == "-m":
            return argv[i + 1:]
    raise AssertionError(f"no maskclip-bench command in {argv}")


def test_every_command_parses_and_the_cuda_paths_are_covered(tmp_path):
    from maskclip_bench.cli import _register_commands, app

    _register_commands()
    group = typer.main.get_command(app)
    steps = dry_run(tmp_path)
    for name, argv in steps.items():
        args = cli_args(argv)
        command = group.commands[args[0]]
        ctx = command.make_context(args[0], args[1:])  # raises on an unknown option or a bad value
        if args[0] == "train":
            assert ctx.params["device"] == "cuda", name
        else:
            assert ctx.params["device"] == "cuda" and str(ctx.params["out"]).startswith(str(tmp_path)), name
    joined = {name: " ".join(argv) for name, argv in steps.items()}
    for method in ("clip", "maskclip"):
        for precision in ("bf16", "amp"):  # amp = fp16 autocast + GradScaler
            assert f"--method {method}" in joined[f"train_{method}_{precision}"]
            assert f"--precision {precision}" in joined[f"train_{method}_{precision}"]
    assert "MASKCLIP_FORCE_DDP=1" in joined["torchrun_nccl"] and "--nproc_per_node 1" in joined["torchrun_nccl"]
    assert "--torchcompile" in joined["torchcompile"]
    assert "--model MaskCLIP-Tiny-8" in joined["bench_tiny"] and "--model MaskCLIP-ViT-B-16" in joined["bench_vit_b16"]
    assert "--max-batch --memory-gb" in joined["max_batch_vit_b16"]
