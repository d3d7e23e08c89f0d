"""Command-line options that several commands share, defined once (typer reads these as parameter defaults).

The evaluation commands share the checkpoint, data and feature-cache options; `train` and `ablate` share the
options that set fields of the training config.
"""
from __future__ import annotations

import typer

# Every evaluation command (zeroshot, retrieval, linprobe, finetune, dense, eval).
CKPT = typer.Option(..., "--ckpt", help="trainer checkpoint, open_clip checkpoint (with --model), local-dir:DIR or "
                    "scratch:MODEL (the model as initialised, seed 0)")
MODEL = typer.Option(None, "--model", help="open_clip model name, required for a plain open_clip checkpoint")
BATCH = typer.Option(64, "--batch-size", help="images per batch")
RESULTS = typer.Option("results/runs", "--results-dir", help="folder receiving one JSON record per evaluation")
SEED = typer.Option(0, "--seed", help="evaluation seed (probe init, splits, shuffling)")
WORKERS = typer.Option(0, "--workers", help="DataLoader worker processes")
DEVICE = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto (always fp32, no autocast)")
CACHE_DIR = typer.Option(None, "--cache-dir", help="feature cache folder (default ~/.cache/maskclip-bench)")
NO_CACHE = typer.Option(False, "--no-cache", help="do not read or write the feature cache")
DATA_SEED = typer.Option(0, "--data-seed", help="seed of the built-in shapes data (fixes the test set)")
TEMPLATES = typer.Option(None, "--templates", help="zero-shot prompts: openai_imagenet, slip, simple or a file")
THREADS = typer.Option(0, "--threads", help="torch and BLAS CPU threads (0: default; 1 is fastest on a busy machine)")
# The standard suites with Flickr30K (eval --suite, report --suite, data fetch --suite): which split is scored.
FLICKR_SPLIT = typer.Option("karpathy", "--flickr-split", help="datacomp and retrieval suites: karpathy (default: "
                            "CLIP_benchmark's wds_flickr30k, the 1K Karpathy test that papers quote and DataComp's "
                            "tasklist has scored since May 2023) or full (all 31,014 images of nlphuji/flickr30k, "
                            "from DIR/nlphuji_flickr30k; DataComp's tasklist before May 2023)")
DATASET = typer.Option(..., "--dataset", help="dataset spec: shapes/shape_color, clip_benchmark_wds:DIR, "
                       "imagefolder:DIR, ...")

# Training-config fields set by both `train` and `ablate` (None: keep the config file's or the default value).
TRAIN_MODEL = typer.Option(None, "--model", help="open_clip model config name, e.g. MaskCLIP-Tiny-8")
TRAIN_DATA = typer.Option(None, "--data", help="training data spec: shapes | csv:PATH | shards:PATTERN "
                          "(webdataset shards; old spelling wds:PATTERN)")
TRAIN_STEPS = typer.Option(None, "--steps", help="optimizer steps")
TRAIN_BATCH = typer.Option(None, "--batch-size", help="per GPU (per rank), as in open_clip")
SET = typer.Option([], "--set", help="any config field: key=value (repeatable)")

# Every command with a progress display.
QUIET = typer.Option(False, "--quiet", help="no progress display")


def allow_pipe_option(config_flag: str) -> typer.models.OptionInfo:
    """``--allow-pipe`` for a command whose config file comes from `config_flag` (--config, --base-config)."""
    return typer.Option(False, "--allow-pipe", help=f"let the {config_flag} file's data spec run a "
                        "shards:pipe:COMMAND shell command (--data on the command line needs no flag)")
