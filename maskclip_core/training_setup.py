"""The objects one training step needs, and its data, built in one place for the trainer and for
`maskclip-bench bench`.

`build_training_setup(cfg, env)` seeds the initial weights, builds the student (open_clip towers plus the
MaskCLIP extras), the EMA teacher when the method has one, AdamW, the fp16 GradScaler when the precision needs
one, and the mask sampler. `wrap_forward` adds DDP and torch.compile around the student's forward only: the
teacher and the optimizer always see the plain module. `build_train_data` is the training dataset as the trainer
reads it.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import open_clip
import torch
from torch.utils.data import Dataset

from .config import TrainConfig
from .data.spec import build_train_dataset, parse_data_spec
from .distributed import DistEnv
from .ema import Teacher
from .model import MaskCLIP
from .optim import build_optimizer
from .precision import grad_scaler
from .step import MaskSampler
from .towers import create_clip, get_tokenizer


def special_token_ids(tokenizer: Any) -> tuple[tuple[int, ...], int]:
    """(ids never masked by MLM, padding id) of an open_clip tokenizer."""
    ids = tuple(i for i in (getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None))
                if i is not None)
    return ids, int(getattr(tokenizer, "pad_token_id", 0) or 0)


def build_model(cfg: TrainConfig, rank: int = 0, world_size: int = 1) -> tuple[MaskCLIP, Any]:
    """Student model and tokenizer for a config (random init; nothing is downloaded)."""
    clip = create_clip(cfg.model.name)
    tokenizer = get_tokenizer(cfg.model.name)
    special, pad = special_token_ids(tokenizer)
    return MaskCLIP(clip, cfg.method, special, pad, rank=rank, world_size=world_size), tokenizer


def train_transform(cfg: TrainConfig, size: int) -> Callable:
    """open_clip's transforms at the model's input `size`. `shapes` is rendered at that size and never cropped: its
    captions name positions ("top left"), which a random crop would falsify."""
    if parse_data_spec(cfg.data.spec).kind == "shapes":
        return open_clip.image_transform(size, is_train=False)
    return open_clip.image_transform(size, is_train=True, aug_cfg={"scale": (cfg.data.aug_scale_min, 1.0)})


def build_train_data(cfg: TrainConfig, tokenizer: Any, size: int) -> Dataset:
    """The training dataset `cfg.data` names, read as the trainer reads it (its transform at the model's input
    `size`, its tokenizer, the run's seed). `bench` times its steps on this data's first batch for that reason."""
    d = cfg.data
    return build_train_dataset(
        d.spec, transform=train_transform(cfg, size), tokenizer=tokenizer, seed=cfg.run.seed, image_size=size,
        csv_img_key=d.csv_img_key, csv_caption_key=d.csv_caption_key, shuffle_buffer=d.shuffle_buffer,
        resampled=d.resampled, csv_root=d.csv_root, allow_outside_root=d.allow_outside_root,
    )


def set_grad_checkpointing(model: torch.nn.Module) -> None:
    """Recompute every open_clip transformer (both towers, the decoders) in the backward pass."""
    from open_clip.transformer import Transformer

    for module in model.modules():
        if isinstance(module, Transformer):
            module.grad_checkpointing = True


@dataclass
class TrainingSetup:
    """The student, its teacher, optimizer, GradScaler and mask sampler, on the run's device."""

    model: MaskCLIP
    tokenizer: Any
    teacher: Teacher | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    masks: MaskSampler


def build_training_setup(cfg: TrainConfig, env: DistEnv) -> TrainingSetup:
    """Everything a step needs for `cfg` on `env.device`, with the same initial weights on every rank."""
    run, m = cfg.run, cfg.method
    torch.manual_seed(run.seed)
    random.seed(run.seed)
    model, tokenizer = build_model(cfg, env.rank, env.world_size)
    model.to(env.device)
    if run.grad_checkpointing:
        set_grad_checkpointing(model)
    teacher = (Teacher(model, m.distill_target, m.soft_teacher_temp, m.soft_center_momentum).to(env.device)
               if model.needs_teacher else None)
    optimizer = build_optimizer(model, cfg.optim, fused=run.fused_optimizer)
    return TrainingSetup(model, tokenizer, teacher, optimizer, grad_scaler(env.device, run.precision),
                         MaskSampler(model, run.seed))


def wrap_forward(model: torch.nn.Module, cfg: TrainConfig, env: DistEnv) -> torch.nn.Module:
    """The module the step calls for the forward: DDP across ranks and/or torch.compile, else `model` itself."""
    forward = model
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # distill_start / mlm_start leave the decoders out of the first steps' graphs: DDP must look for them.
        phased = cfg.method.distill_start > 0 or cfg.method.mlm_start > 0
        forward = DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None,
                                          find_unused_parameters=phased)
    if cfg.run.torchcompile:
        forward = torch.compile(forward, backend=cfg.run.compile_backend)
    return forward
