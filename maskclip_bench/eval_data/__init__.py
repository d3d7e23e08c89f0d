"""Evaluation datasets selected by spec strings (``shapes/shape_color``, ``wds:DIR``, ``flickr30k:ROOT``, ...).

``build_eval_dataset(spec, transform=...)`` returns an ``EvalDataset`` (or a list of them for a bare
``shapes``) whose items match what CLIP_benchmark's datasets give, so the evaluators score the same
samples ``clip_benchmark eval`` would. See ``spec`` for the spec forms and one module per kind:
``shapes_tasks``, ``wds_benchmark``, ``folders`` (imagefolder), ``karpathy`` (flickr30k / mscoco),
``flickr30k_full`` (all of nlphuji/flickr30k), ``ade20k``, ``cb_datasets`` (clip_benchmark:NAME),
``caption_selection`` (SugarCrepe, Winoground), ``winogavil``; ``common`` holds the bad-image handling.
"""
from __future__ import annotations

from .common import SkipBadImages, classification_collate, default_templates, retrieval_collate
from .shapes_tasks import list_shapes_tasks
from .spec import KINDS, EvalDataset, build_eval_dataset

__all__ = [
    "EvalDataset",
    "KINDS",
    "SkipBadImages",
    "build_eval_dataset",
    "classification_collate",
    "default_templates",
    "list_shapes_tasks",
    "retrieval_collate",
]
