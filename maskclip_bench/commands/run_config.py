"""Flags to a checked TrainConfig: config file + typed flags + `--set`, the model/data checks and the precision
announcement. Shared by `train`, `ablate` and `demo`, so no command imports another."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from maskclip_core.config import TrainConfig, apply_overrides, load_config, set_value, validate


def build_config(
    config: Optional[Path],
    overrides: list[str],
    flags: dict[str, object],
) -> TrainConfig:
    """Config file (or defaults), then explicit flags, then `--set key=value` (last wins)."""
    cfg = load_config(config) if config else TrainConfig()
    for key, value in flags.items():
        if value is not None:
            set_value(cfg, key, value, parse=False)
    apply_overrides(cfg, overrides)
    return validate(cfg)


def trust_typed_data_spec(cfg: TrainConfig, flags: dict[str, object], overrides: list[str],
                          allow_pipe: bool) -> None:
    """Let the final data spec run a ``pipe:`` shell command when the user typed it.

    Typed means: given with ``--data`` or ``--set data.spec=...`` on the command line, or read from an explicit
    ``--config`` file whose caller passed ``--allow-pipe`` (`allow_pipe`). A spec from a run folder's saved config
    (``--resume`` without ``--config``), a baseline or a record is never trusted.
    """
    from maskclip_core.config import resolve_key
    from maskclip_core.data.shell_specs import trust_shell_location
    from maskclip_core.data.spec import parse_data_spec

    typed = flags.get("data.spec") is not None or any(
        "=" in item and resolve_key(item.split("=", 1)[0].strip()) == "data.spec" for item in overrides)
    if typed or allow_pipe:
        spec = parse_data_spec(cfg.data.spec)
        if spec.kind == "wds" and spec.path:
            trust_shell_location(spec.path)


def check_decoder_heads(cfg: TrainConfig) -> None:
    """One line, not an assertion deep in torch, when the image decoder's heads do not divide its width.

    The width defaults from the image tower (`maskclip_core.decoders.decoder_dims`), so this needs the model's
    open_clip config.
    """
    import open_clip

    from maskclip_core.decoders import decoder_dims
    from maskclip_core.errors import ConfigError
    from maskclip_core.towers import register_model_configs

    m = cfg.method
    if m.name != "maskclip" or m.decoder_heads == 0:
        return  # the default head count always divides the width
    register_model_configs()
    vision = (open_clip.get_model_config(cfg.model.name) or {}).get("vision_cfg") or {}
    tower_width = vision.get("width")
    if m.decoder_width == 0 and not isinstance(tower_width, int):
        return  # not a ViT config open_clip knows here; the model build reports it
    width, _ = decoder_dims(tower_width or 0, m.decoder_width)
    if width % m.decoder_heads:
        raise ConfigError(f"method.decoder_heads ({m.decoder_heads}) must divide the image decoder's width "
                          f"({width}{'' if m.decoder_width else ', half the image tower width'})")


def check_model_and_data(cfg: TrainConfig) -> None:
    """Fail fast, with one line, on an unknown model or unreadable data before building anything heavy."""
    from maskclip_core.data.spec import parse_data_spec
    from maskclip_core.towers import check_model_name

    check_model_name(cfg.model.name)
    check_decoder_heads(cfg)
    spec = parse_data_spec(cfg.data.spec)
    if spec.kind == "csv":
        from maskclip_core.data.csv_dataset import CsvDataset

        CsvDataset(spec.path, transform=None, tokenizer=None, img_key=cfg.data.csv_img_key,
                   caption_key=cfg.data.csv_caption_key, root=cfg.data.csv_root or None,
                   allow_outside_root=cfg.data.allow_outside_root)
    elif spec.kind == "wds":
        from maskclip_core.data.wds_dataset import expand_shards

        expand_shards(spec.path)


def announce_precision(cfg: TrainConfig) -> None:
    """Resolve `run.precision` (`auto`) for the device this process will train on, print it once (rank 0), and
    store the resolved value in `cfg`, so that config.json, checkpoints and records carry it."""
    from maskclip_core.distributed import pick_device, world_info_from_env
    from maskclip_core.precision import resolve_precision

    local_rank, rank, _ = world_info_from_env()
    requested = cfg.run.precision
    choice = resolve_precision(requested, pick_device(cfg.run.device, local_rank))
    if rank == 0:
        typer.echo(choice.describe(requested))
    cfg.run.precision = choice.precision
