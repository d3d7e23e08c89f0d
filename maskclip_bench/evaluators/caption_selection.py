"""Image-caption selection (SugarCrepe, Winoground) from image features, scored as CLIP_benchmark scores it.

`clip_benchmark.metrics.image_caption_selection.evaluate` takes, per instance of I images and C captions, the
image-by-caption similarities and asks that image i's closest caption be caption i (text_acc), that caption i's
closest image be image i (image_acc), and both (acc), for i < min(I, C); closest is ``argmax``, so a tie goes to
the lower index, as there. It encodes the images itself from a dataloader; here they come encoded (once, and
cached) from the evaluation session, grouped per instance, and only the captions are encoded.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from .features import encode_texts


def selection_metrics(image_features: torch.Tensor, text_features: torch.Tensor) -> dict[str, float]:
    """text_acc, image_acc and acc from L2-normalised features [N, I, dim] (images) and [N, C, dim] (captions)."""
    scores = image_features.float() @ text_features.float().transpose(1, 2)  # [N, I, C]
    n = min(scores.shape[1], scores.shape[2])
    truth = torch.arange(n)
    text_ok = (scores.argmax(dim=2)[:, :n] == truth).all(dim=1)  # each image's closest caption is its own
    image_ok = (scores.argmax(dim=1)[:, :n] == truth).all(dim=1)  # each caption's closest image is its own
    return {"image_acc": image_ok.float().mean().item(), "text_acc": text_ok.float().mean().item(),
            "acc": (text_ok & image_ok).float().mean().item()}


def evaluate_caption_selection(model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                               features: Mapping[str, Any], device: str | torch.device = "cpu") -> dict[str, float]:
    """CLIP_benchmark's image_caption_selection metrics (see `selection_metrics`) from `features`: image features
    "image_features" [N, I, dim] and "captions", N lists of C captions."""
    captions: list[list[str]] = features["captions"]
    per_instance = len(captions[0])
    texts = encode_texts(model, tokenizer, [c for group in captions for c in group], device)
    return selection_metrics(features["image_features"], texts.view(len(captions), per_instance, -1))
