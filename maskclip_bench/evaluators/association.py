"""Visual association (WinoGAViL), scored as DataComp scores it (``eval_utils/wino_eval.py``).

An instance is a cue word and 5, 6, 10 or 12 candidate images, k of which humans associated with the cue. The
model picks the k images most similar to the prompt "A <cue>" ("An <cue>" before a vowel, the cue lower-cased),
and the instance scores the Jaccard index of its pick and the true associations. Reported: the mean over every
instance (`avg_jaccard_score`), over the instances of each candidate count (`jaccard_score_5`, `_6`, `_10`,
`_12`) and over the small and large games (`jaccard_score_5-6`, `jaccard_score_10-12`, DataComp's main metric).
A group without instances is left out rather than written as NaN.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from .features import encode_texts


def association_prompt(cue: str) -> str:
    """DataComp's prompt for a WinoGAViL cue: "A <cue>", or "An <cue>" when the cue starts with a vowel."""
    cue = cue.lower()
    return f"An {cue}" if cue[:1] in ("a", "e", "i", "o", "u") else f"A {cue}"


def jaccard(picked: torch.Tensor, truth: torch.Tensor) -> float:
    """|picked & truth| / |picked | truth| of two boolean masks; 0 when both are empty (sklearn's zero division)."""
    union = (picked | truth).sum().item()
    return (picked & truth).sum().item() / union if union else 0.0


def association_metrics(scores: Sequence[torch.Tensor], truths: Sequence[torch.Tensor]) -> dict[str, float]:
    """The metrics of the module docstring from each instance's cue-image similarities [I] and true mask [I]."""
    per_instance, sizes = [], []
    for score, truth in zip(scores, truths):
        picked = torch.zeros_like(truth)
        picked[score.topk(int(truth.sum())).indices] = True  # the k most similar images
        per_instance.append(jaccard(picked, truth))
        sizes.append(truth.numel())
    values, n = torch.tensor(per_instance, dtype=torch.float64), torch.tensor(sizes)
    groups = {"avg_jaccard_score": n > 0, "jaccard_score_5": n == 5, "jaccard_score_6": n == 6,
              "jaccard_score_10": n == 10, "jaccard_score_12": n == 12, "jaccard_score_5-6": n <= 6,
              "jaccard_score_10-12": n >= 10}
    return {name: values[mask].mean().item() for name, mask in groups.items() if mask.any()}


def evaluate_association(model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                         features: Mapping[str, Any], device: str | torch.device = "cpu") -> dict[str, float]:
    """`association_metrics` from `features`: "image_features" [M, dim] (L2-normalised, one row per distinct
    image), "rows" (per instance, the rows of its candidate images in order), "cues" and "truths" (per instance, a
    boolean mask over its candidates)."""
    texts = encode_texts(model, tokenizer, [association_prompt(c) for c in features["cues"]], device)
    images = features["image_features"].float()
    scores = [images[rows] @ text for rows, text in zip(features["rows"], texts)]
    return association_metrics(scores, features["truths"])
