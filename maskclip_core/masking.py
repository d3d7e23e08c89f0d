"""Image patch masking: MAE-style random masking and BEiT-style block masking.

Both return `(ids_keep, mask)`: `ids_keep` [B, n_keep] are the visible patch indices (CLS is never part of the
patch sequence, so it is never masked), and `mask` [B, N] is True at masked patches. Every sample masks exactly
`round(mask_ratio * N)` patches so the visible tokens form a rectangular batch.
"""
from __future__ import annotations

import math

import torch


def num_masked(num_patches: int, mask_ratio: float) -> int:
    """How many of `num_patches` are masked at `mask_ratio` (at least 1, at most N - 1)."""
    return min(max(int(round(mask_ratio * num_patches)), 1), num_patches - 1)


def random_masking(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the patches with the smallest noise (MAE's argsort of uniform noise). noise: [B, N]."""
    b, n = noise.shape
    n_keep = n - num_masked(n, mask_ratio)
    ids_keep = noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values  # sorted: visible tokens keep raster order
    mask = torch.ones(b, n, dtype=torch.bool, device=noise.device)
    mask.scatter_(1, ids_keep, False)
    return ids_keep, mask


def _block_mask_one(grid_h: int, grid_w: int, n_mask: int, gen: torch.Generator) -> torch.Tensor:
    """BEiT-style: add random rectangles (aspect ratio log-uniform in [0.3, 1/0.3]) until n_mask patches are
    covered, then fix the count exactly by unmasking/masking random patches."""
    mask = torch.zeros(grid_h, grid_w, dtype=torch.bool)
    min_area = max(1, min(16, n_mask // 4))
    for _ in range(100):
        covered = int(mask.sum())
        if covered >= n_mask:
            break
        max_area = max(min_area, n_mask - covered)
        area = min_area + float(torch.rand(1, generator=gen)) * (max_area - min_area)
        aspect = math.exp(math.log(0.3) + float(torch.rand(1, generator=gen)) * 2 * math.log(1 / 0.3))
        h = max(1, min(grid_h, int(round(math.sqrt(area * aspect)))))
        w = max(1, min(grid_w, int(round(math.sqrt(area / aspect)))))
        top = int(torch.randint(0, grid_h - h + 1, (1,), generator=gen))
        left = int(torch.randint(0, grid_w - w + 1, (1,), generator=gen))
        mask[top : top + h, left : left + w] = True
    flat = mask.flatten()
    extra = int(flat.sum()) - n_mask
    if extra > 0:  # too many: unmask random masked patches
        idx = flat.nonzero().squeeze(1)
        flat[idx[torch.randperm(len(idx), generator=gen)[:extra]]] = False
    elif extra < 0:  # too few: mask random visible patches
        idx = (~flat).nonzero().squeeze(1)
        flat[idx[torch.randperm(len(idx), generator=gen)[:-extra]]] = True
    return flat


def block_masking(
    generators: list[torch.Generator], grid_size: tuple[int, int], mask_ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block masking, one generator per sample."""
    gh, gw = grid_size
    n = gh * gw
    n_mask = num_masked(n, mask_ratio)
    mask = torch.stack([_block_mask_one(gh, gw, n_mask, g) for g in generators])
    ids_keep = (~mask).float().argsort(dim=1, descending=True, stable=True)[:, : n - n_mask].sort(dim=1).values
    return ids_keep, mask
