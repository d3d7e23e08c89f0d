"""How fast a model encodes images and texts for evaluation: the rates `maskclip-bench data cost --measure`
divides a suite's images and texts by.

An evaluation encodes without gradient, in eval mode, in fp32 (as the evaluators do), so this times exactly that:
`encode_image` on a batch of noise images at the model's input size and the evaluators' text pass
(`encode_text_features`: up to the batch's last end token) on a batch of `bench`'s 17-token captions, randomly
initialised (nothing downloads; the weights do not change the cost), the median of a few
timed repeats after a warm-up. Image decoding and resizing (done by DataLoader workers) are not included.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from maskclip_bench.perf.throughput import device_name, make_batch, synchronize
from maskclip_core.encoders import encode_text_features
from maskclip_core.towers import create_clip


@dataclass(frozen=True)
class EncodingRates:
    """Images and texts a second for one model on one device."""

    model: str
    images_per_s: float
    texts_per_s: float
    device: str  # the CPU's or GPU's name
    threads: int


def _rate(fn: Callable[[], Any], n: int, repeats: int, device: torch.device) -> float:
    fn()  # warm-up: allocator, kernels chosen
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


@torch.no_grad()
def measure_encoding_rates(model_name: str, images: int = 16, texts: int = 128, repeats: int = 5,
                           device: str = "cpu") -> EncodingRates:
    """Time `model_name`'s image and text towers as an evaluation runs them (see the module docstring)."""
    dev = torch.device(device)
    model = create_clip(model_name).to(dev).eval()
    image_batch, _ = make_batch(model_name, images, dev)
    _, text_batch = make_batch(model_name, texts, dev)
    return EncodingRates(
        model=model_name,
        images_per_s=_rate(lambda: model.encode_image(image_batch), images, repeats, dev),
        texts_per_s=_rate(lambda: encode_text_features(model, text_batch), texts, repeats, dev),
        device=device_name(dev), threads=torch.get_num_threads())
