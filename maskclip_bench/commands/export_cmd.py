"""`maskclip-bench export` (a checkpoint as an open_clip local-dir model) and the `data` group: `data export` (an
evaluation dataset in CLIP_benchmark's wds, open_clip's csv or an ImageFolder layout), `data fetch` (the standard
suites' datasets from the Hugging Face hub) and `data cost` (how long a standard suite takes)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from maskclip_bench.commands.options import FLICKR_SPLIT, THREADS

data_app = typer.Typer(name="data", help="Dataset utilities.", no_args_is_help=True)


def export_command(
    ckpt: str = typer.Option(..., "--ckpt", help="trainer checkpoint, open_clip checkpoint (with --model) "
                             "or local-dir:DIR"),
    out: Path = typer.Option(..., "--out", help="folder for open_clip_config.json + open_clip_model.safetensors"),
    model: Optional[str] = typer.Option(None, "--model", help="open_clip model name, for a plain open_clip "
                                        "checkpoint"),
) -> None:
    """Write a checkpoint as an open_clip local-dir model (loadable with open_clip and clip_benchmark)."""
    from maskclip_bench.export.model import export_model

    result = export_model(ckpt, out, model_name=model)
    typer.echo(f"exported {result.model_name} (sha256 {result.source_hash[:12]}) to {result.out_dir}")
    typer.echo(f"load it with open_clip.create_model_and_transforms('{result.open_clip_name}') or "
               f"clip_benchmark eval --model '{result.open_clip_name}' --pretrained ''")


@data_app.command("export")
def data_export_command(
    dataset: str = typer.Option(..., "--dataset", help="one classification or retrieval dataset spec, "
                                "e.g. shapes/shape_color"),
    split: str = typer.Option("test", "--split", help="test, val or train"),
    fmt: str = typer.Option("wds", "--format", help="wds (CLIP_benchmark), csv (open_clip) or imagefolder"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier export of this split"),
    seed: int = typer.Option(0, "--seed", help="shapes seed"),
    image_size: int = typer.Option(64, "--image-size", help="size shapes images are rendered at"),
    samples_per_shard: int = typer.Option(1000, "--samples-per-shard", help="wds samples per tar shard"),
    image_format: str = typer.Option("png", "--image-format", help="png, webp (lossless) or jpg"),
    templates: Optional[str] = typer.Option(None, "--templates", help="override the templates written"),
) -> None:
    """Export an evaluation dataset (see maskclip_bench.export.data for the layouts)."""
    from maskclip_bench.export.data import export_dataset

    result = export_dataset(dataset, split, fmt, out, seed=seed, image_size=image_size,
                            samples_per_shard=samples_per_shard, image_format=image_format, templates=templates,
                            overwrite=overwrite)
    bad = f", {result.bad_samples} unreadable skipped" if result.bad_samples else ""
    typer.echo(f"wrote {result.num_samples} {result.task} samples ({result.fmt}, {result.split}{bad}) "
               f"to {result.out_dir}")
    if fmt == "wds":
        typer.echo(f"clip_benchmark eval --dataset wds/NAME --dataset_root {result.out_dir} --split {result.split}")


@data_app.command("fetch")
def data_fetch_command(
    names: list[str] = typer.Argument(None, help="CLIP_benchmark dataset names, e.g. cifar10 vtab/caltech101, or "
                                      "winoground, or nlphuji/flickr30k (all 31,014 Flickr30K images)"),
    dataset_root: Path = typer.Option(..., "--dataset-root", help="folder receiving wds_<name> folders (and "
                                      "winoground/, nlphuji_flickr30k/)"),
    suite: Optional[str] = typer.Option(None, "--suite", help="fetch every readable dataset of a standard suite "
                                        "(datacomp, vtab, vtab+, imagenet_robustness, retrieval, compositional) not "
                                        "there yet"),
    flickr_split: str = FLICKR_SPLIT,
    split: str = typer.Option("test", "--split", help="split to fetch"),
) -> None:
    """Download CLIP_benchmark's webdataset copies, Winoground or nlphuji/flickr30k from the Hugging Face hub (the
    only command that downloads)."""
    from maskclip_bench.eval_data.fetch import fetch_dataset
    from maskclip_bench.evaluation.standard_suites import KARPATHY, UNSUPPORTED, suite_tasks
    from maskclip_core.errors import DataError

    wanted = list(names or [])
    if suite is None and flickr_split != KARPATHY:
        raise DataError("--flickr-split picks the Flickr30K dataset of --suite; without one, name the dataset "
                        "(nlphuji/flickr30k)")
    if suite is not None:
        readable = [t for t in suite_tasks(suite, flickr_split) if t.kind != UNSUPPORTED]
        wanted += [t.key for t in readable if t.fetchable]
        for task in (t for t in readable if not t.fetchable):  # SugarCrepe, WinoGAViL: files from elsewhere
            typer.echo(f"not fetched here: {task.title}: {task.fetch_hint().replace('ROOT', str(dataset_root))}",
                       err=True)
    if not wanted:
        raise DataError("name at least one dataset, or --suite NAME")
    failed = []
    for name in dict.fromkeys(wanted):
        try:
            folder, fetched = fetch_dataset(name, dataset_root, split)
        except DataError as exc:
            typer.echo(f"failed: {exc}", err=True)
            failed.append(name)
            continue
        typer.echo(f"{'fetched' if fetched else 'already there'}: {name} -> {folder}")
    if failed:
        raise DataError(f"{len(failed)} of {len(dict.fromkeys(wanted))} dataset(s) not fetched: {', '.join(failed)}")


@data_app.command("cost")
def data_cost_command(
    suite: str = typer.Option(..., "--suite", help="a standard suite (datacomp, vtab, vtab+, imagenet_robustness, "
                              "retrieval, compositional)"),
    images_per_s: Optional[float] = typer.Option(None, "--images-per-s", help="the image tower's rate on your "
                                                 "hardware (e.g. a task record's num_samples / wall_time_s)"),
    texts_per_s: Optional[float] = typer.Option(None, "--texts-per-s", help="the text tower's rate (captions or "
                                                "prompts a second)"),
    measure: Optional[str] = typer.Option(None, "--measure", help="measure both rates now for this model (random "
                                          "weights, fp32, no gradient, as evaluation encodes), e.g. ViT-B-16"),
    threads: int = THREADS,
    flickr_split: str = FLICKR_SPLIT,
    out: Optional[Path] = typer.Option(None, "--out", help="also write the table to this markdown file"),
) -> None:
    """Estimate how long a standard suite takes: each task's images and texts at the given (or measured) rates; no
    data needed."""
    from maskclip_bench.evaluation.standard_suites import KARPATHY, suite_tasks
    from maskclip_bench.evaluation.suite_cost import suite_cost
    from maskclip_bench.results.suite_table import cost_lines
    from maskclip_core.atomic_write import write_text_atomic
    from maskclip_core.errors import DataError
    from maskclip_core.thread_limit import thread_limit

    tasks = suite_tasks(suite, flickr_split)
    flags = "" if flickr_split == KARPATHY else f" --flickr-split {flickr_split}"
    note = "as given on the command line"
    if measure is not None:
        from maskclip_bench.perf.encoding_rate import measure_encoding_rates

        with thread_limit(threads):
            rates = measure_encoding_rates(measure)
        images_per_s, texts_per_s = rates.images_per_s, rates.texts_per_s
        note = (f"measured {measure} on {rates.device}, {rates.threads} thread(s), fp32, no gradient: "
                f"{images_per_s:.3g} images/s, {texts_per_s:.3g} texts/s")
        typer.echo(note)
        command = f"maskclip-bench data cost --suite {suite} --measure {measure}" + (
            f" --threads {threads}" if threads > 0 else "") + flags
    elif images_per_s is None or texts_per_s is None:
        raise DataError("give --images-per-s and --texts-per-s, or --measure MODEL to measure them")
    else:
        command = f"maskclip-bench data cost --suite {suite} --images-per-s {images_per_s:g} --texts-per-s " \
                  f"{texts_per_s:g}" + flags
    costs = suite_cost(tasks, images_per_s, texts_per_s)
    text = "\n".join(cost_lines(suite, costs, float(f"{images_per_s:.3g}"), float(f"{texts_per_s:.3g}"), command,
                                note))
    typer.echo(text)
    if out is not None:
        write_text_atomic(out, text)


def register(app: typer.Typer) -> None:
    """Add `export` and the `data` group."""
    app.command("export")(export_command)
    app.add_typer(data_app, name="data")
