"""Zero-shot image-text retrieval with several captions per image, computed as CLIP_benchmark does.

Recall@k follows CLIP papers: a query counts as a hit when at least one of its positives is among its
top-k. The per-query recall comes from `clip_benchmark.metrics.zeroshot_retrieval.recall_at_k`
(run through its `batchify`), so the numbers match `clip_benchmark.metrics.zeroshot_retrieval.evaluate`.

Large sets are ranked in chunks of queries (`recall_from_embeddings`): all 31,014 images of Flickr30K with their
155,070 captions would make a 19 GB float32 text-by-image score matrix (and a 4.8 GB positive mask), so above
`MAX_SCORES` entries each chunk of text queries is scored against all images, and each chunk of images against
all texts, one chunk at a time. Each query's row holds the same products as in the whole matrix and is ranked by
the same `recall_at_k`, so the metrics are the same numbers.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

from .features import encode_images, encode_texts

# Score-matrix entries (text x image) above which recall is computed in chunks of queries, and about the size of a
# chunk: 2**26 entries are 256 MiB of float32 scores and 64 MiB of positive mask (MS-COCO's 5K test, 125M pairs, is
# ranked in chunks too; the numbers are the same either way).
MAX_SCORES = 2**26


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
    max_scores: int = MAX_SCORES,
) -> dict[str, float]:
    """Image-text retrieval recall@k (see `recall_from_scores`).

    The dataloader yields (images, captions) with a list of captions per image, as CLIP_benchmark's
    retrieval datasets do with its `image_captions_collate_fn`. `features` is `encode_images` output
    holding "image_features" and "captions"; when given, `dataloader` is not read (texts are still
    encoded, they are cheap next to images and depend on the tokenizer). Sets of more than `max_scores` text-image
    pairs are ranked in chunks (see `recall_from_embeddings`).
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
    return recall_from_embeddings(texts_emb, features["image_features"], text_image_index, recall_k_list,
                                  max_scores=max_scores)


def recall_from_embeddings(
    texts_emb: torch.Tensor,
    images_emb: torch.Tensor,
    text_image_index: torch.Tensor,
    k_list: Iterable[int] = (1, 5, 10),
    batch_size: int = 64,
    max_scores: int = MAX_SCORES,
) -> dict[str, float]:
    """`recall_from_scores` of the text-by-image scores ``texts_emb @ images_emb.T``, text t's one positive being
    image ``text_image_index[t]``.

    Up to `max_scores` entries the whole score matrix is built (CLIP_benchmark's `evaluate` does the same); above,
    queries are ranked in chunks of about `max_scores` entries (module docstring), with the same numbers.
    """
    n_texts, n_images = len(texts_emb), len(images_emb)
    k_list = list(k_list)
    if n_texts * n_images <= max_scores:
        scores = texts_emb @ images_emb.t()
        positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
        positive_pairs[torch.arange(n_texts), text_image_index] = True
        return recall_from_scores(scores, positive_pairs, k_list, batch_size)
    t2i = _chunked_hits(n_texts, n_images, k_list, batch_size, max_scores, lambda a, b: (
        texts_emb[a:b] @ images_emb.t(),
        text_image_index[a:b, None] == torch.arange(n_images)[None, :]))
    # Image queries: columns a:b of the whole matrix, computed as texts @ images (the same operand order as the
    # unchunked path), then transposed to one row per image.
    i2t = _chunked_hits(n_images, n_texts, k_list, batch_size, max_scores, lambda a, b: (
        (texts_emb @ images_emb[a:b].t()).t(),
        torch.arange(a, b)[:, None] == text_image_index[None, :]))
    metrics = {}
    for k in k_list:
        metrics[f"image_retrieval_recall@{k}"] = t2i[k].float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = i2t[k].float().mean().item()
    return metrics


def _chunked_hits(
    n_queries: int,
    n_candidates: int,
    k_list: Sequence[int],
    batch_size: int,
    max_scores: int,
    chunk: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
) -> dict[int, torch.Tensor]:
    """{k: per-query hit (at least one positive in the top k)} over queries ranked `chunk(a, b)` at a time, which
    gives the scores [b - a, n_candidates] of queries a..b-1 and their positive mask."""
    rows = max(1, max_scores // max(1, n_candidates))
    hits: dict[int, list[torch.Tensor]] = {k: [] for k in k_list}
    for start in range(0, n_queries, rows):
        scores, positive = chunk(start, min(start + rows, n_queries))
        for k in k_list:
            recall = batchify(recall_at_k, scores, positive, batch_size, "cpu", k=min(k, n_candidates))
            hits[k].append(recall > 0)
    return {k: torch.cat(parts) for k, parts in hits.items()}
