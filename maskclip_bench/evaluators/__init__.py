"""Evaluators: plain functions of (model, dataloader, ...) in the style of CLIP_benchmark.

Zero-shot classification and retrieval reuse CLIP_benchmark's metric code and agree with it exactly, as does
image-caption selection (SugarCrepe, Winoground) computed from features; visual association (WinoGAViL) is
scored as DataComp scores it;
`encode_images` gives the cacheable feature dict that zero-shot, retrieval and the probes share.
"""
from .association import association_metrics, evaluate_association
from .caption_selection import evaluate_caption_selection, selection_metrics
from .dense import evaluate_dense_probe
from .features import encode_images, encode_texts
from .finetune import finetune
from .linprobe import evaluate_linear_probe
from .retrieval import evaluate_retrieval, recall_from_scores
from .templates import get_templates
from .zeroshot import evaluate_zeroshot

__all__ = [
    "association_metrics",
    "evaluate_association",
    "encode_images",
    "evaluate_caption_selection",
    "encode_texts",
    "evaluate_dense_probe",
    "evaluate_linear_probe",
    "evaluate_retrieval",
    "evaluate_zeroshot",
    "finetune",
    "get_templates",
    "recall_from_scores",
    "selection_metrics",
]
