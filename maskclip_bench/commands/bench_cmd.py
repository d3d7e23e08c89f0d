"""`maskclip-bench bench`: measured training throughput of open_clip's loop, our clip, maskclip and the masked
view on the current device; prints a table and writes per-device sections of results/perf.md (see
maskclip_bench.perf.throughput)."""
from __future__ import annotations

import shlex
from pathlib import Path

import typer


def split_list(values: list[str]) -> list[str]:
    """Repeatable options that also take comma lists: ["fp32,bf16", "x"] -> ["fp32", "bf16", "x"]."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def bench_command(
    model: str = typer.Option("MaskCLIP-Tiny-8", "--model", help="open_clip model config (ours included)"),
    batch_size: int = typer.Option(64, "--batch-size"),
    precision: list[str] = typer.Option([], "--precision", help="auto | fp32 | bf16, repeatable or a comma list "
                                        "(default: auto, what training picks on this device)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    steps: int = typer.Option(10, "--steps", help="timed steps per variant"),
    warmup: int = typer.Option(2, "--warmup", help="untimed steps per variant before timing"),
    rounds: int = typer.Option(1, "--rounds", help="measure the variants in turn this many times (each round "
                               "rebuilds them; medians over every round's steps), so that a slow spell of the "
                               "machine falls on every variant alike"),
    threads: int = typer.Option(0, "--threads", help="torch intra-op threads (0: torch's default)"),
    variants: list[str] = typer.Option([], "--variants", help="subset of open_clip, clip, maskclip, "
                                       "maskclip-masked-view, maskclip-masked-view-mlm-half (repeatable or a comma "
                                       "list; default: all but the last)"),
    out: Path = typer.Option(Path("results/perf.md"), "--out", help="markdown file; only this run's device / "
                             "model / precision sections are replaced"),
    breakdown: bool = typer.Option(False, "--breakdown", help="also measure FLOPs and time per part of the step "
                                   "(clip, maskclip, masked view) and the data wait of a short real training run"),
    loop_steps: int = typer.Option(12, "--loop-steps", help="--breakdown: steps of the real training run "
                                   "(logged in two windows; the second is reported); 0 skips it"),
    loop_workers: int = typer.Option(1, "--loop-workers", help="--breakdown: loader workers of that run (the "
                                     "trainer's default: 1)"),
    max_batch: bool = typer.Option(False, "--max-batch", help="find the largest batch per variant whose two "
                                   "training steps fit --memory-gb (doubling then bisection, one subprocess per "
                                   "probe)"),
    memory_gb: float = typer.Option(0.0, "--memory-gb", help="memory budget for --max-batch, GiB"),
    max_batch_limit: int = typer.Option(4096, "--max-batch-limit", help="--max-batch never probes above this"),
    torchcompile: bool = typer.Option(False, "--torchcompile", help="our variants' forward through torch.compile "
                                      "(the trainer's --torchcompile); open_clip's loop stays eager"),
    fused_adamw: bool = typer.Option(False, "--fused-adamw", help="our variants' AdamW fused (the trainer's "
                                     "--set fused_optimizer=true); open_clip's stays as its main.py builds it"),
) -> None:
    """Time one training step of open_clip's own loop and of our clip / maskclip / masked-view variants (same
    model config, batch and process); print samples/s, peak memory, FLOP/s and the targeted ratios."""
    import torch

    from maskclip_bench.commands.console import command_console
    from maskclip_bench.perf import throughput as perf
    from maskclip_core.distributed import pick_device
    from maskclip_core.errors import ConfigError, MaskClipError
    from maskclip_core.precision import resolve_precision
    from maskclip_core.towers import check_model_name

    dev = pick_device(device)
    asked = split_list(precision) or ["auto"]
    chosen = split_list(variants) or list(perf.DEFAULT_VARIANTS)
    precisions = []
    for p in asked:
        if p not in ("auto", *perf.PRECISIONS):
            raise ConfigError(f"unknown precision '{p}' (choose auto, {', '.join(perf.PRECISIONS)})")
        choice = resolve_precision(p, dev)
        if choice.precision not in perf.PRECISIONS:
            raise ConfigError(f"precision {p} resolves to {choice.precision} here, which bench does not time "
                              f"(choose {', '.join(perf.PRECISIONS)})")
        typer.echo(choice.describe(p))
        if choice.warning:
            typer.echo(choice.warning, err=True)
        precisions.append(choice.precision)
    for v in chosen:
        if v not in perf.VARIANTS:
            raise ConfigError(f"unknown variant '{v}' (choose {', '.join(perf.VARIANTS)})")
    if batch_size < 2:
        raise ConfigError(f"--batch-size must be >= 2 for a contrastive loss, got {batch_size}")
    if steps < 1 or warmup < 0 or rounds < 1:
        raise ConfigError("--steps and --rounds must be >= 1 and --warmup >= 0")
    if max_batch and memory_gb <= 0:
        raise ConfigError("--max-batch needs --memory-gb N (the budget, GiB, > 0)")
    if memory_gb and not max_batch:
        raise ConfigError("--memory-gb is the budget of --max-batch: add --max-batch")
    if loop_steps < 0 or loop_workers < 0 or max_batch_limit < 2:
        raise ConfigError("--loop-steps and --loop-workers must be >= 0 and --max-batch-limit >= 2")
    check_model_name(model)
    chosen = [v for v in perf.VARIANTS if v in chosen]  # canonical order, no duplicates
    precisions = list(dict.fromkeys(precisions))

    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    command = "maskclip-bench bench " + shlex.join([
        "--model", model, "--batch-size", str(batch_size), *[a for p in precisions for a in ("--precision", p)],
        "--device", device, "--steps", str(steps), "--warmup", str(warmup),
        *(["--rounds", str(rounds)] if rounds > 1 else []), "--threads", str(threads),
        "--variants", ",".join(chosen), "--out", str(out),
        *(["--breakdown", "--loop-steps", str(loop_steps)] if breakdown else []),
        *(["--loop-workers", str(loop_workers)] if breakdown and loop_workers != 1 else []),
        *(["--torchcompile"] if torchcompile else []),
        *(["--fused-adamw"] if fused_adamw else []),
        *(["--max-batch", "--memory-gb", f"{memory_gb:g}", "--max-batch-limit", str(max_batch_limit)]
          if max_batch else []),
    ])
    console = command_console()
    name = perf.device_name(dev)
    sections: dict[str, str] = {}
    try:
        images, text = perf.make_batch(model, batch_size, dev)
        for prec in precisions:
            per_round: dict[str, list[perf.VariantResult]] = {v: [] for v in chosen}
            for round_index in range(rounds):
                for variant in chosen:
                    if per_round[variant] and not per_round[variant][-1].ok:
                        continue  # failed in an earlier round: reported once
                    tag = f" (round {round_index + 1} of {rounds})" if rounds > 1 else ""
                    console.print(f"[dim]{prec} {variant}: {warmup} warm-up + {steps} timed step(s){tag}...[/dim]")
                    try:
                        per_round[variant].append(perf.measure_variant(
                            variant, model, images, text, prec, steps, warmup,
                            compile=torchcompile and variant != "open_clip",
                            flops=not torchcompile and round_index == 0,  # FLOPs: the eager sections, counted once
                            fused=fused_adamw and variant != "open_clip"))
                    except MaskClipError:
                        raise
                    except Exception as exc:  # one failing variant (e.g. out of memory) is reported, not fatal
                        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:200].replace("|", "/")
                        per_round[variant].append(perf.VariantResult(variant, batch_size, error=message))
                        console.print(f"[red]{variant} failed[/red]: {message}")
            results = {v: perf.merge_rounds(r) for v, r in per_round.items()}
            info = perf.RunInfo(command=command, device=dev, device_name=name, model=model, precision=prec,
                                batch_size=batch_size, steps=steps, warmup=warmup,
                                threads=torch.get_num_threads(), compiled=torchcompile, fused=fused_adamw,
                                rounds=rounds)
            key, body = perf.render_section(info, results)
            if breakdown:
                body += "\n" + run_breakdown(console, model, images, text, prec, chosen, loop_steps, loop_workers,
                                              command, {v: r.peak_bytes for v, r in results.items()},
                                              {v: r.samples_per_s for v, r in results.items() if r.ok})
            if max_batch:
                body += "\n" + run_max_batch(console, model, prec, device, chosen, memory_gb, max_batch_limit)
            sections[key] = body
            console.print(results_table(info, results))
    finally:
        torch.set_num_threads(previous_threads)
    models = list(dict.fromkeys([model, perf.GPU_REFERENCE_MODEL]))
    perf.write_perf_md(out, sections, dev.type, models)
    console.print(f"wrote {out}")


BREAKDOWN_VARIANTS = ("clip", "maskclip", "maskclip-masked-view", "maskclip-masked-view-mlm-half")


def run_breakdown(console, model: str, images, text, precision: str, chosen: list[str], loop_steps: int,  # type: ignore[no-untyped-def]
                  loop_workers: int, command: str, memory: dict, step_only: dict) -> str:
    """Per-part costs of our variants (of those chosen) and the trainer's data wait; markdown for perf.md."""
    from maskclip_bench.perf import cost_breakdown

    variants = [v for v in BREAKDOWN_VARIANTS if v in chosen]
    tables, loops = {}, {}
    for variant in variants:
        console.print(f"[dim]{precision} {variant}: cost breakdown...[/dim]")
        tables[variant] = cost_breakdown.measure_breakdown(variant, model, images, text, precision)
        if loop_steps:
            console.print(f"[dim]{precision} {variant}: {loop_steps}-step training run...[/dim]")
            loops[variant] = cost_breakdown.measure_training_loop(
                variant, model, images.shape[0], precision, steps=loop_steps, window=max(1, loop_steps // 2),
                workers=loop_workers)
    data_seconds = cost_breakdown.measure_data_prep(model, images.shape[0]) if loop_steps else None
    text_md = cost_breakdown.render_breakdown(model, precision, images.shape[0], tables, command, loops,
                                              {v: memory.get(v) for v in variants}, step_only, data_seconds)
    console.print(text_md)
    return text_md


def run_max_batch(console, model: str, precision: str, device: str, chosen: list[str], memory_gb: float,  # type: ignore[no-untyped-def]
                  limit: int) -> str:
    """The largest batch per variant within the budget; markdown for perf.md."""
    from maskclip_bench.perf import memory

    budget = int(memory_gb * 2**30)
    lines = [f"### Largest batch within {memory_gb:g} GiB · {model} · {precision}", "",
             "Doubling from 2, then bisection; each probe a fresh subprocess running two training steps (CPU: peak "
             "RSS of that process, including the interpreter and torch; GPU: allocator peak, allocator capped at "
             "the budget).", "", "| variant | largest batch | peak MiB at that batch | probes |", "|---|---|---|---|"]
    for variant in [v for v in chosen if v != "open_clip"]:  # our variants: what limits a MaskCLIP batch
        peaks: dict[int, memory.Probe] = {}

        def fits(batch: int) -> bool:
            probe = memory.run_probe(variant, model, batch, precision, device, budget)
            peaks[batch] = probe
            console.print(f"[dim]{variant} batch {batch}: {'fits' if probe.fits else 'does not fit'} "
                          f"({probe.reason or 'peak'} {'' if probe.peak_bytes is None else probe.peak_bytes >> 20} "
                          f"MiB)[/dim]")
            return probe.fits

        best, probes = memory.largest_fitting(fits, 2, limit)
        if best is None:
            lines.append(f"| {variant} | none (batch 2: {peaks[2].reason}) | - | {probes} |")
        else:
            peak = peaks[best].peak_bytes
            at_limit = " (the probe limit)" if best == limit else ""
            lines.append(f"| {variant} | {best}{at_limit} | {'-' if peak is None else f'{peak / 2**20:,.0f}'} | "
                         f"{probes} |")
    text_md = "\n".join(lines) + "\n"
    console.print(text_md)
    return text_md


def results_table(info, results):  # type: ignore[no-untyped-def]
    """Rich table of one precision's results, with the ratio lines as its caption."""
    from rich.table import Table

    from maskclip_bench.perf import throughput as perf

    cuda = info.device.type == "cuda"
    peak = perf.peak_bf16_tflops(info.device_name) if cuda else None
    table = Table(title=f"{info.device.type}: {info.device_name} · {info.model} · {info.precision} · batch "
                        f"{info.batch_size} · {info.threads} thread(s)",
                  caption="\n".join(r.line() for r in perf.ratios(results, info.best_settings)))
    for column in ("variant", "s / step", "samples / s",
                   "peak MiB (cuda max allocated)" if cuda else "peak RSS MiB (this variant)",
                   "TFLOP/s", "MFU" if peak or not cuda else "MFU (peak unknown)"):
        table.add_column(column)
    for variant, r in results.items():
        if not r.ok:
            table.add_row(variant, f"[red]failed[/red]: {r.error}", "", "", "", "")
            continue
        tf = r.tflops
        mfu = "-" if not cuda or not peak or not tf else f"{100 * tf / peak:.1f} %"
        table.add_row(variant, f"{r.seconds:.4f}", f"{r.samples_per_s:,.1f}",
                      "-" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:,.0f}",
                      "-" if tf is None else f"{tf:.3f}", mfu)
    return table


def register(app: typer.Typer) -> None:
    """Add `bench`."""
    app.command("bench")(bench_command)
