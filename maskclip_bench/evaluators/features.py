"""Frozen-feature extraction shared by the evaluators.

`encode_images` makes one pass over a dataloader and returns a plain dict (tensors, plus the captions
when the dataset gives them), so an eval suite can cache it and feed zero-shot, retrieval, linear-probe
and dense-probe tasks from the same pass:

- "image_features": L2-normalised projected image embeddings [N, embed_dim] (what CLIP_benchmark scores)
- "targets": labels stacked along dim 0 ([N], [N, C] multi-label, [N, H, W] masks, ...), when not captions
- "captions": list of N lists of strings, when the labels are captions (retrieval datasets)
- "pooled_features": pooled image features before `proj` [N, width], if asked for
- "patch_tokens": patch tokens after `ln_post`, without the class token [N, grid*grid, width], if asked for

Everything runs in fp32 without autocast, in `model.eval()`, and ends up on the CPU. Texts are encoded only up to
each batch's last end token (`maskclip_core.encoders.encode_text_features`; open_clip's features, less padding work).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from maskclip_core.encoders import encode_text_features

# Label keys tried, in order, for dict batches when no key is given.
LABEL_KEYS = ("label", "labels", "target", "targets", "mask", "segmentation", "captions", "caption", "texts", "text")


def split_batch(batch: Any, label_key: str | None = None) -> tuple[torch.Tensor, Any]:
    """Images and labels of one batch: an (images, labels) pair as in CLIP_benchmark, or a dict with "image".

    For dicts the labels are `batch[label_key]`, or the first of `LABEL_KEYS` present (None if none is).
    """
    if isinstance(batch, dict):
        images = batch["image"]
        if label_key is not None:
            return images, batch[label_key]
        return images, next((batch[k] for k in LABEL_KEYS if k in batch), None)
    images, labels = batch[0], batch[1]
    return images, labels


def _is_captions(labels: Any) -> bool:
    return isinstance(labels, (list, tuple)) and len(labels) > 0 and isinstance(labels[0], (str, list, tuple))


def _as_caption_lists(labels: Sequence[Any]) -> list[list[str]]:
    # CLIP_benchmark's image_captions_collate_fn gives one list of captions per image; a dict batch
    # collated by torch's default_collate gives one string per image.
    return [[c] if isinstance(c, str) else list(c) for c in labels]


def visual_forward(visual: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """open_clip VisionTransformer.forward split open: (projected, pooled pre-projection, patch tokens).

    `projected` equals `visual(images)`; the patch tokens are after `ln_post` and exclude the class token.
    """
    x = visual.transformer(visual._embeds(images))
    pooled, tokens = visual._pool(x)
    if getattr(visual, "final_ln_after_pool", False) and getattr(visual, "attn_pool", None) is None:
        # With final_ln_after_pool open_clip normalises only the pooled vector; the tokens still need ln_post.
        tokens = visual.ln_post(tokens)
    projected = pooled @ visual.proj if visual.proj is not None else pooled
    return projected, pooled, tokens


@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    dataloader: Iterable[Any],
    device: str | torch.device = "cpu",
    *,
    pooled_pre_projection: bool = False,
    with_patch_tokens: bool = False,
    label_key: str | None = None,
) -> dict[str, Any]:
    """Encode every image of `dataloader` once; see the module docstring for the returned keys.

    `model` is an open_clip CLIP-like module. Without the optional outputs the projected features come
    from `model.encode_image` (exactly what CLIP_benchmark calls); with them, from a single pass through
    the open_clip VisionTransformer `model.visual`, which computes the same projected features.
    """
    model.eval()
    model.to(device)
    need_internals = pooled_pre_projection or with_patch_tokens
    out: dict[str, list[Any]] = {"image_features": [], "pooled_features": [], "patch_tokens": [], "targets": []}
    captions: list[list[str]] = []
    for batch in dataloader:
        images, labels = split_batch(batch, label_key)
        images = images.to(device)
        if need_internals:
            projected, pooled, tokens = visual_forward(model.visual, images)
            if pooled_pre_projection:
                out["pooled_features"].append(pooled.float().cpu())
            if with_patch_tokens:
                out["patch_tokens"].append(tokens.float().cpu())
        else:
            projected = model.encode_image(images)
        out["image_features"].append(F.normalize(projected.float(), dim=-1).cpu())
        if _is_captions(labels):
            captions.extend(_as_caption_lists(labels))
        elif labels is not None:
            out["targets"].append(torch.as_tensor(labels).cpu())
    result: dict[str, Any] = {k: torch.cat(v) for k, v in out.items() if v}
    if captions:
        result["captions"] = captions
    return result


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    texts: Sequence[str],
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """L2-normalised text embeddings [len(texts), embed_dim], encoded in batches of `batch_size`, on the CPU."""
    model.eval()
    model.to(device)
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size])).to(device)
        chunks.append(F.normalize(encode_text_features(model, tokens).float(), dim=-1).cpu())
    return torch.cat(chunks) if chunks else torch.empty(0)


class EndTokenText:
    """`model` as CLIP_benchmark's `zero_shot_classifier` uses it (only `encode_text`), the pass cut after each
    batch's last end token (`encode_text_features`: the same features; a prompt such as "a photo of a dog." is
    ~8 of the 77 positions)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unnormalised text features, as `CLIP.encode_text`."""
        return encode_text_features(self.model, tokens)
