"""How long a standard suite takes to evaluate: each task's test images at a measured encoding rate.

Sizes are DataComp's (``tasklist.yml``, last changed 2 June 2023: each task's ``size`` and its ``time`` field in
seconds, which the file does not say how or on what hardware it was measured). The time here is images / rate:
the image tower dominates a zero-shot or retrieval task (the class prompts and captions are encoded once and are
few beside the images), so a rate measured for one task carries over. It is an estimate, not a measurement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from maskclip_core.errors import DataError

from .standard_suites import FLICKR_FULL_KEY, StandardTask

# DataComp's tasklist.yml, per task key: (size, time in seconds).
DATACOMP_TASKLIST: dict[str, tuple[int, int]] = {
    "vtab/caltech101": (6085, 29),
    "cifar10": (10000, 18),
    "vtab/cifar100": (10000, 18),
    "vtab/clevr_count_all": (15000, 64),
    "vtab/clevr_closest_object_distance": (15000, 64),
    "country211": (21100, 66),
    "vtab/dtd": (1880, 17),
    "vtab/eurosat": (5400, 12),
    "fgvc_aircraft": (3333, 40),
    "food101": (25250, 101),
    "gtsrb": (12630, 20),
    "imagenet1k": (50000, 136),
    "imagenet_sketch": (50889, 249),
    "imagenetv2": (10000, 50),
    "imagenet-a": (7500, 47),
    "imagenet-o": (2000, 19),
    "imagenet-r": (30000, 148),
    "vtab/kitti_closest_vehicle_distance": (711, 16),
    "mnist": (10000, 20),
    "objectnet": (18574, 317),
    "vtab/flowers": (6149, 51),
    "vtab/pets": (3669, 34),
    "voc2007": (14976, 41),
    "vtab/pcam": (32768, 38),
    "renderedsst2": (1821, 10),
    "vtab/resisc45": (6300, 28),
    "cars": (8041, 59),
    "stl10": (8000, 20),
    "sun397": (108754, 923),
    "vtab/svhn": (26032, 39),
    "flickr30k": (1000, 20),
    "mscoco_captions": (5000, 23),
    "misc/winogavil": (3563, 1096),
    "wilds/iwildcam": (42791, 251),
    "wilds/camelyon17": (85054, 212),
    "wilds/fmow": (22108, 88),
    "fairness/dollar_street": (3503, 404),
    "fairness/geode": (12488, 354),
}
# Images encoded here where DataComp gives no size or another count: WinoGAViL's size counts its 3,563 instances,
# which show 2,044 distinct candidate images, each encoded once; all of nlphuji/flickr30k (--flickr-split full) is
# 31,014 images; Winoground's 400 examples show 800 images. SugarCrepe's tasks share one pool of COCO images whose
# size depends on which task files are there, so they have none.
ENCODED_IMAGES: dict[str, int] = {"misc/winogavil": 2044, FLICKR_FULL_KEY: 31014, "winoground": 800}


@dataclass(frozen=True)
class TaskCost:
    """One task's images and estimated seconds (None where its size is not known here)."""

    title: str
    key: str
    images: int | None
    seconds: float | None
    datacomp_time_s: int | None


def suite_cost(tasks: Sequence[StandardTask], images_per_s: float) -> list[TaskCost]:
    """Each task's images encoded and images / `images_per_s` seconds, in the suite's order."""
    if not images_per_s > 0:
        raise DataError(f"--images-per-s must be positive, not {images_per_s}")
    out = []
    for task in tasks:
        size, time_s = DATACOMP_TASKLIST.get(task.key, (None, None))
        images = ENCODED_IMAGES.get(task.key, size)
        out.append(TaskCost(task.title, task.key, images, None if images is None else images / images_per_s, time_s))
    return out
