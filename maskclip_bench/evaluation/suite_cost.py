"""How long a standard suite takes to evaluate: each task's images and texts at measured encoding rates.

Sizes are DataComp's (``tasklist.yml``, last changed 2 June 2023: each task's ``size``, ``num_classes`` and its
``time`` field in seconds, which the file does not say how or on what hardware it was measured). A task encodes
its images once and its texts once: a classification task's prompts are its classes times its templates (ImageNet:
1,000 x 80 = 80,000 prompts, more than its 50,000 images, so the text side is not negligible), a retrieval task's
texts are its captions, WinoGAViL's its cues. Templates are counted from CLIP_benchmark's packaged template file
(``en_zeroshot_classification_templates.json``), which its webdataset copies were written with; a dataset it does
not list falls back to ImageNet's 80, as CLIP_benchmark's builder does (the WILDS and fairness copies carry their
own template files, so their count is an assumption, marked). Time = images / image rate + texts / text rate: an
estimate, not a measurement.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

from maskclip_core.errors import DataError

from .standard_suites import FLICKR_FULL_KEY, RETRIEVAL, StandardTask

# DataComp's tasklist.yml, per task key: (size, num_classes or 0, time in seconds).
DATACOMP_TASKLIST: dict[str, tuple[int, int, int]] = {
    "vtab/caltech101": (6085, 102, 29),
    "cifar10": (10000, 10, 18),
    "vtab/cifar100": (10000, 100, 18),
    "vtab/clevr_count_all": (15000, 8, 64),
    "vtab/clevr_closest_object_distance": (15000, 6, 64),
    "country211": (21100, 211, 66),
    "vtab/dtd": (1880, 47, 17),
    "vtab/eurosat": (5400, 10, 12),
    "fgvc_aircraft": (3333, 100, 40),
    "food101": (25250, 101, 101),
    "gtsrb": (12630, 43, 20),
    "imagenet1k": (50000, 1000, 136),
    "imagenet_sketch": (50889, 1000, 249),
    "imagenetv2": (10000, 1000, 50),
    "imagenet-a": (7500, 200, 47),
    "imagenet-o": (2000, 200, 19),
    "imagenet-r": (30000, 200, 148),
    "vtab/kitti_closest_vehicle_distance": (711, 4, 16),
    "mnist": (10000, 10, 20),
    "objectnet": (18574, 113, 317),
    "vtab/flowers": (6149, 102, 51),
    "vtab/pets": (3669, 37, 34),
    "voc2007": (14976, 20, 41),
    "vtab/pcam": (32768, 2, 38),
    "renderedsst2": (1821, 2, 10),
    "vtab/resisc45": (6300, 45, 28),
    "cars": (8041, 196, 59),
    "stl10": (8000, 10, 20),
    "sun397": (108754, 397, 923),
    "vtab/svhn": (26032, 10, 39),
    "flickr30k": (1000, 0, 20),
    "mscoco_captions": (5000, 0, 23),
    "misc/winogavil": (3563, 0, 1096),
    "wilds/iwildcam": (42791, 182, 251),
    "wilds/camelyon17": (85054, 2, 212),
    "wilds/fmow": (22108, 62, 88),
    "fairness/dollar_street": (3503, 58, 404),
    "fairness/geode": (12488, 40, 354),
}
# Images encoded here where DataComp gives no size or another count: WinoGAViL's size counts its 3,563 instances,
# which show 2,044 distinct candidate images, each encoded once; all of nlphuji/flickr30k (--flickr-split full) is
# 31,014 images; Winoground's 400 examples show 800 images. SugarCrepe's tasks share one pool of COCO images whose
# size depends on which task files are there, so they have none.
ENCODED_IMAGES: dict[str, int] = {"misc/winogavil": 2044, FLICKR_FULL_KEY: 31014, "winoground": 800}
# Texts of the tasks that are not classification: Flickr's 1K test 5,000 captions, COCO's 5K test 25,010, all of
# Flickr30K 155,070, WinoGAViL one cue an instance, Winoground two captions an example.
TEXTS: dict[str, int] = {"flickr30k": 5000, "mscoco_captions": 25010, FLICKR_FULL_KEY: 155070,
                         "misc/winogavil": 3563, "winoground": 800}
# Datasets CLIP_benchmark prompts with ImageNet's templates (its builder's fallback, and the ImageNet variants).
_TEMPLATES_OF = {"imagenet_sketch": "imagenet1k", "imagenetv2": "imagenet1k", "imagenet-a": "imagenet1k",
                 "imagenet-o": "imagenet1k", "imagenet-r": "imagenet1k", "objectnet": "imagenet1k"}


def template_counts() -> dict[str, int]:
    """Templates per dataset name in CLIP_benchmark's packaged English template file."""
    text = resources.files("clip_benchmark.datasets").joinpath("en_zeroshot_classification_templates.json")
    return {name: len(templates) for name, templates in json.loads(text.read_text(encoding="utf-8")).items()}


@dataclass(frozen=True)
class TaskCost:
    """One task's images and texts encoded and estimated seconds (None where a count is not known here);
    `assumed` marks a template count taken from CLIP_benchmark's fallback, not from the dataset's own entry."""

    title: str
    key: str
    images: int | None
    texts: int | None
    seconds: float | None
    datacomp_time_s: int | None
    assumed: bool = False


def _texts(task: StandardTask, classes: int, templates: dict[str, int]) -> tuple[int | None, bool]:
    if task.key in TEXTS or task.kind == RETRIEVAL or not classes:
        return TEXTS.get(task.key), False
    name = task.key.split("/", 1)[-1]
    name = _TEMPLATES_OF.get(name, name)
    return classes * templates.get(name, templates["imagenet1k"]), name not in templates


def suite_cost(tasks: Sequence[StandardTask], images_per_s: float, texts_per_s: float) -> list[TaskCost]:
    """Each task's images and texts and images / `images_per_s` + texts / `texts_per_s` seconds, in the suite's
    order."""
    if not (images_per_s > 0 and texts_per_s > 0):
        raise DataError(f"--images-per-s and --texts-per-s must be positive, not {images_per_s} and {texts_per_s}")
    templates = template_counts()
    out = []
    for task in tasks:
        size, classes, time_s = DATACOMP_TASKLIST.get(task.key, (None, 0, None))
        images = ENCODED_IMAGES.get(task.key, size)
        texts, assumed = _texts(task, classes, templates)
        seconds = None if images is None or texts is None else images / images_per_s + texts / texts_per_s
        out.append(TaskCost(task.title, task.key, images, texts, seconds, time_s, assumed))
    return out
