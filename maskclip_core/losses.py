"""Loss terms of CLIP and MaskCLIP. Each returns a scalar; the model returns them as a dict of named terms and the
trainer sums them with the method's weights (open_clip's convention). Reductions run in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip import ClipLoss


def contrastive_loss(
    loss_fn: ClipLoss, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """open_clip's ClipLoss on L2-normalised features (symmetric InfoNCE, learnable temperature)."""
    image_features = F.normalize(image_features.float(), dim=-1)
    text_features = F.normalize(text_features.float(), dim=-1)
    return loss_fn(image_features, text_features, logit_scale.float().exp())


def feature_distill_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Regression of masked-patch predictions [B, M, D] onto LayerNorm-ed teacher tokens [B, M, D]."""
    pred, target = pred.float(), target.float()
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    if kind == "cosine":
        return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
    raise ValueError(f"unknown distill loss {kind}")


def soft_distill_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Cross-entropy between the teacher's centred, sharpened prototype distribution and the student's."""
    log_p = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return -(teacher_probs.float() * log_p).sum(dim=-1).mean()


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, N, p*p*3] in the raster order of the ViT's patch grid."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def pixel_targets(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """MAE's per-patch normalised pixels [B, N, p*p*3] (the `pixel` reconstruction control)."""
    x = patchify(images.float(), patch_size)
    mean, var = x.mean(dim=-1, keepdim=True), x.var(dim=-1, keepdim=True)
    return (x - mean) / (var + 1e-6).sqrt()


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor, denominator: float | None = None) -> torch.Tensor:
    """Cross-entropy on the masked token positions (logits [M, V], labels [M]).

    Mean over the M positions by default. Data-parallel ranks and accumulation micro-batches hold different
    numbers of masked tokens, so there the trainer passes `denominator` (the masked-token count of the whole
    step divided by the number of shards): the sum over positions / denominator, averaged over the shards, is
    then exactly the mean over the whole step's tokens, as one process with the whole batch computes it.
    """
    if labels.numel() == 0:
        return logits.sum() * 0.0
    if denominator is None:
        return F.cross_entropy(logits.float(), labels)
    return F.cross_entropy(logits.float(), labels, reduction="sum") / denominator
