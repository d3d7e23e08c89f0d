"""Can the tiny image tower learn shape at all? A supervised check behind `results/shapes_calibration.md`.

Trains MaskCLIP-Tiny-8's image tower (open_clip's VisionTransformer: 64 px, patch 8, width 192, 6 layers) from
random initialisation with a linear head on the main object's shape (10 classes), on one-object `shapes` images,
and prints test accuracy. It is the upper bound of what a contrastive run can learn of shape from the same pixels
in the same number of samples: if supervision cannot, captions cannot either.

Usage (one thread; arguments are one JSON object, every key optional):

    python results/scripts/shapes_supervised.py '{"steps": 600, "diff": 0.5, "scale": 1.6}'

Keys: steps (600, batch 32: the grids' 19,200 samples), diff (shapes difficulty, 1.0), scale (1.6), maxobj (1),
size (image side, 64), patch (8), lr (1e-3, AdamW, weight decay 0.05, 60 warm-up steps then cosine), ntrain (8,000
train images rendered once; test: the first 1,000 of the test split).
"""
import json
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from open_clip.transformer import VisionTransformer

from maskclip_core.data.shapes import ShapesOptions, render

torch.set_num_threads(1)


def build(args: dict) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Render the train and test tensors (images roughly standardised, main-object shape labels)."""
    opts = ShapesOptions(scale=args.get("scale", 1.6), min_objects=1, max_objects=args.get("maxobj", 1))

    def load(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for i in range(n):
            s = render(i, split, 0, args.get("size", 64), args.get("diff", 1.0), opts)
            xs.append(np.asarray(s.image, np.float32) / 255.0)
            ys.append(s.shape)
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2)
        return (x - 0.45) / 0.27, torch.tensor(ys)

    return load("train", args.get("ntrain", 8000)), load("test", 1000)


args = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
t0 = time.time()
(xtr, ytr), (xte, yte) = build(args)
t1 = time.time()
torch.manual_seed(0)
size = args.get("size", 64)
vit = VisionTransformer(image_size=size, patch_size=args.get("patch", 8), width=192, layers=6, heads=3,
                        mlp_ratio=4.0, output_dim=128)
head = nn.Linear(128, 10)
params = list(vit.parameters()) + list(head.parameters())
opt = torch.optim.AdamW(params, lr=args.get("lr", 1e-3), weight_decay=0.05)
steps, bs = args.get("steps", 600), 32
g = torch.Generator().manual_seed(0)
for step in range(steps):
    lr = args.get("lr", 1e-3) * min(1.0, (step + 1) / 60) * 0.5 * (1 + np.cos(np.pi * step / steps))
    for pg in opt.param_groups:
        pg["lr"] = lr
    idx = torch.randint(0, len(xtr), (bs,), generator=g)
    loss = nn.functional.cross_entropy(head(vit(xtr[idx])), ytr[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 100 == 0:
        print(step, round(loss.item(), 3), flush=True)
with torch.no_grad():
    acc = (head(vit(xte)).argmax(1) == yte).float().mean().item()
    acctr = (head(vit(xtr[:1000])).argmax(1) == ytr[:1000]).float().mean().item()
print("RESULT", json.dumps(args), "test", round(acc * 100, 1), "train", round(acctr * 100, 1),
      "render_s", round(t1 - t0), "train_s", round(time.time() - t1), flush=True)
