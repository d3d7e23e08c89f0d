"""Zero-shot image-text retrieval with several captions per image, computed as CLIP_benchmark does.

Recall@k follows CLIP papers: a query counts as a hit when at least one of its positives is among its
top-k. The per-query recall comes from `clip_benchmark.metrics.zeroshot_retrieval.recall_at_k`
(run through its `batchify`), so the numbers match `clip_benchmark.metrics.zeroshot_retrieval.evaluate`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

from .features import encode_images, encode_texts


def recall_from_scores(
    scores: torch.Tensor,
    positive_pairs: torch.Tensor,
    k_list: Iterable[int] = (1, 5, 10),
    batch_size: int = 64,
) -> dict[str, float]:
    """Retrieval recall@k from text-by-image scores [n_texts, n_images] and a same-shape boolean positive mask.

    Returns `image_retrieval_recall@k` (text queries ranking images) and `text_retrieval_recall@k`
    (image queries ranking texts). A k above the number of candidates ranks all of them.
    `batch_size` queries are ranked at a time, since recall_at_k builds a [batch, k, n_candidates] one-hot.
    """
    n_texts, n_images = scores.shape
    metrics = {}
    for k in k_list:
        # recall_at_k gives each query's fraction of positives in its top-k; > 0 means "at least one hit".
        t2i = batchify(recall_at_k, scores, positive_pairs, batch_size, "cpu", k=min(k, n_images))
        i2t = batchify(recall_at_k, scores.T, positive_pairs.T, batch_size, "cpu", k=min(k, n_texts))
        metrics[f"image_retrieval_recall@{k}"] = (t2i > 0).float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = (i2t > 0).float().mean().item()
    return metrics


def evaluate_retrieval(
    model: torch.nn.Module,
    dataloader: Iterable[Any] | None,
    tokenizer: Callable[[list[str]], torch.Tensor],
    device: str | torch.device = "cpu",
    recall_k_list: Sequence[int] = (1, 5, 10),
    features: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Image-text retrieval recall@k (see `recall_from_scores`).

    The dataloader yields (images, captions) with a list of captions per image, as CLIP_benchmark's
    retrieval datasets do with its `image_captions_collate_fn`. `features` is `encode_images` output
    holding "image_features" and "captions"; when given, `dataloader` is not read (texts are still
    encoded, they are cheap next to images and depend on the tokenizer).
    """
    model.eval()
    model.to(device)
    if features is None:
        if dataloader is None:
            raise ValueError("evaluate_retrieval needs a dataloader or precomputed features")
        features = encode_images(model, dataloader, device)
    captions: list[list[str]] = features["captions"]
    texts = [text for per_image in captions for text in per_image]
    text_image_index = torch.tensor([i for i, per_image in enumerate(captions) for _ in per_image])
    texts_emb = encode_texts(model, tokenizer, texts, device)
    scores = texts_emb @ features["image_features"].t()
    positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
    positive_pairs[torch.arange(len(texts)), text_image_index] = True
    return recall_from_scores(scores, positive_pairs, recall_k_list)
