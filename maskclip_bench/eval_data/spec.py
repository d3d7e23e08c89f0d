"""Evaluation dataset specs: the spec-string dispatcher (the ``EvalDataset`` record it returns is in ``dataset``).

A spec string names a dataset and the task to evaluate on it; only the text before the first colon
selects the kind, so paths may contain colons:

=============================  ===============================================================
``shapes``                     every task of the built-in shapes dataset (a list)
``shapes/<task>[:k=v,...]``    one task: shape, color, shape_color, count, compositional,
                               retrieval, dense (see ``shapes_tasks``)
``clip_benchmark_wds:DIR``     CLIP_benchmark's webdataset layout (``DIR/<split>/{0..n-1}.tar``); the old
                               spelling ``wds:DIR`` still works (training's ``wds:``/``shards:`` are shards)
``imagefolder:DIR``            a torchvision ImageFolder tree, optionally with train/val/test
``flickr30k:ROOT``             CLIP_benchmark's Flickr30k Karpathy layout
``mscoco:ROOT``                CLIP_benchmark's MS-COCO Karpathy layout (``mscoco_captions``)
``flickr30k_full:DIR``         all 31,014 Flickr30K images, a snapshot of nlphuji/flickr30k
                               (see ``flickr30k_full``)
``ade20k:ROOT``                ADEChallengeData2016 semantic segmentation
``clip_benchmark:NAME[@ROOT]`` anything ``clip_benchmark.datasets.builder.build_dataset`` builds;
                               ``sugar_crepe/<task>`` and ``winoground`` through ``caption_selection``
``winogavil:DIR``              WinoGAViL's visual associations, DataComp's 3,563 instances (see
                               ``winogavil``)
=============================  ===============================================================

Errors a user can cause (a missing root, an empty folder, a missing class file, an unknown kind)
raise ``maskclip_core.errors.DataError`` with one line naming the path. Images that do not decode are
skipped and counted in ``bad_samples`` (see ``common`` for how).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from maskclip_core.data.spec_syntax import split_spec
from maskclip_core.errors import DataError

from .ade20k import build_ade20k
from .cb_datasets import build_clip_benchmark
from .dataset import EvalDataset, root_path
from .flickr30k_full import build_flickr30k_full
from .folders import build_imagefolder
from .karpathy import build_karpathy
from .shapes_tasks import build_shapes
from .wds_benchmark import build_wds
from .winogavil import build_winogavil


@dataclass(frozen=True)
class BuildRequest:
    """What a reader may use besides its spec: the caller's transform, split and options."""

    transform: Callable[[Any], Any] | None
    split: str
    seed: int
    image_size: int
    templates: str | None
    verify_images: bool


def _shapes(kind: str, rest: str, r: BuildRequest) -> EvalDataset | list[EvalDataset]:
    return build_shapes(rest, transform=r.transform, split=r.split, seed=r.seed, image_size=r.image_size,
                        templates=r.templates)


def _wds(kind: str, rest: str, r: BuildRequest) -> EvalDataset:
    if not root_path(rest).is_dir() and ("{" in rest or "::" in rest or rest.endswith(".tar")):
        # The training layout's form: say which layout evaluation reads instead of "not a folder".
        raise DataError(f"dataset spec '{kind}:{rest}' names webdataset shards (training's layout); evaluation "
                        f"reads CLIP_benchmark's layout, a folder: clip_benchmark_wds:DIR with DIR/test/nshards.txt "
                        f"and DIR/test/0.tar ... (write one with `maskclip-bench data export --format wds`)")
    return build_wds(root_path(rest), transform=r.transform, split=r.split, templates=r.templates,
                     verify_images=r.verify_images)


def _imagefolder(kind: str, rest: str, r: BuildRequest) -> EvalDataset:
    return build_imagefolder(root_path(rest), transform=r.transform, split=r.split, templates=r.templates,
                             verify_images=r.verify_images)


def _karpathy(kind: str, rest: str, r: BuildRequest) -> EvalDataset:
    return build_karpathy(kind, root_path(rest), transform=r.transform, split=r.split,
                          verify_images=r.verify_images)


def _flickr30k_full(kind: str, rest: str, r: BuildRequest) -> EvalDataset:
    return build_flickr30k_full(root_path(rest), transform=r.transform, split=r.split, verify_images=r.verify_images)


def _ade20k(kind: str, rest: str, r: BuildRequest) -> EvalDataset:
    return build_ade20k(root_path(rest), transform=r.transform, split=r.split, templates=r.templates,
                        verify_images=r.verify_images)


def _winogavil(kind: str, rest: str, r: BuildRequest) -> EvalDataset:
    return build_winogavil(root_path(rest), transform=r.transform, split=r.split, verify_images=r.verify_images)


def _clip_benchmark(kind: str, rest: str, r: BuildRequest) -> EvalDataset:
    return build_clip_benchmark(rest, transform=r.transform, split=r.split, templates=r.templates,
                                verify_images=r.verify_images)


# The dispatcher: spec kind -> reader (a new layout is one reader module and one entry here).
BUILDERS: dict[str, Callable[[str, str, BuildRequest], EvalDataset | list[EvalDataset]]] = {
    "shapes": _shapes, "clip_benchmark_wds": _wds, "wds": _wds, "imagefolder": _imagefolder, "flickr30k": _karpathy, "mscoco": _karpathy,
    "flickr30k_full": _flickr30k_full, "ade20k": _ade20k, "clip_benchmark": _clip_benchmark,
    "winogavil": _winogavil,
}
KINDS: tuple[str, ...] = tuple(BUILDERS)
TASKS: tuple[str, ...] = ("classification", "retrieval", "segmentation", "caption_selection", "association")


def split_kind(spec: str) -> tuple[str, str]:
    """``"kind:rest"`` -> (kind, rest); shapes specs keep their task and options in ``rest``."""
    if not spec.strip():
        raise DataError("empty dataset spec")
    parts = split_spec(spec)
    kind, rest = parts.kind, parts.rest
    if kind == "shapes" or kind.startswith("shapes/"):
        return "shapes", spec.strip()
    if kind not in KINDS:
        raise DataError(f"unknown dataset spec '{spec}' (kinds: {', '.join(KINDS)})")
    if not rest:
        where = "NAME[@ROOT]" if kind == "clip_benchmark" else "DIR"
        raise DataError(f"dataset spec '{spec}' needs a location: {kind}:{where}")
    return kind, rest


def build_eval_dataset(
    spec: str,
    *,
    transform: Callable[[Any], Any] | None,
    split: str = "test",
    seed: int = 0,
    image_size: int = 64,
    templates: str | None = None,
    verify_images: bool = True,
) -> EvalDataset | list[EvalDataset]:
    """Build the evaluation dataset a spec string names (a list for a bare ``shapes``).

    Args:
        spec: See the module docstring.
        transform: Applied to each RGB PIL image (e.g. open_clip's eval preprocess); ``None`` keeps PIL
            images (what ``data export`` uses).
        split: The split to return as ``dataset`` ("test", "val" or "train"; ADE20K maps test/val to
            its ``validation`` folder).
        seed: Seed of the shapes generator (the same seed gives the same test set).
        image_size: Size the shapes images are rendered at.
        templates: Override the zero-shot templates: a name the evaluators know ("openai_imagenet",
            "slip", "simple") or a file with one ``{c}`` template per line.
        verify_images: Decode every image once while building, so corrupt files are skipped and
            counted up front (see ``common``).

    Raises:
        DataError: one line naming the spec or path, for anything the user can fix.
    """
    kind, rest = split_kind(spec)
    request = BuildRequest(transform, split, seed, image_size, templates, verify_images)
    return BUILDERS[kind](kind, rest, request)
