"""`data fetch`: CLIP_benchmark's webdataset copy of a dataset, Winoground, or all of Flickr30K (nlphuji/flickr30k)
from the Hugging Face hub into a dataset root.

CLIP_benchmark publishes its evaluation sets as ``clip-benchmark/wds_<name>`` dataset repositories (``/`` in the name
written ``-``), in exactly the layout ``clip_benchmark_wds:DIR`` reads. Fetching one is
``huggingface_hub.snapshot_download`` of the split's shards and the metadata files into ``ROOT/wds_<name>``, where
``eval --suite NAME --dataset-root ROOT`` finds it. DataComp's WILDS and fairness tasks (`DATACOMP_COPIES`) come
from DataComp's own copies instead, ``djghosh/wds_<name>_test`` into ``ROOT/wds_<name>_test`` (its
``download_evalsets.py`` names, ``fairness/`` dropped): their samples carry the ``npy`` metadata that DataComp's
worst-group metrics group by (its ``eval_utils/wilds_eval.py`` and ``fairness_eval.py`` read it from there). ``winoground`` is the gated repository facebook/winoground
(accept its terms on the hub, then ``huggingface-cli login``): its ``data/examples.jsonl`` and ``data/images.zip``
into ``ROOT/winoground``, the archive extracted to ``data/images/`` (the layout of
`maskclip_bench.eval_data.caption_selection`). ``nlphuji/flickr30k`` (the 31,014 images of ``--flickr-split full``):
its ``flickr_annotations_30k.csv`` and ``flickr30k-images.zip`` into ``ROOT/nlphuji_flickr30k``, the archive extracted
there to ``flickr30k-images/`` (the layout of `maskclip_bench.eval_data.flickr30k_full`; the archive is kept, as
the hub's snapshot has it, and may be deleted once extracted). Nothing else in the project downloads, and only
this command does (on the user's request).
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any, Callable

from maskclip_core.errors import DataError

from .caption_selection import WINOGROUND_EXAMPLES, WINOGROUND_IMAGES, WINOGROUND_REPO
from .flickr30k_full import ANNOTATIONS as FLICKR30K_ANNOTATIONS
from .flickr30k_full import ARCHIVE as FLICKR30K_ARCHIVE
from .flickr30k_full import FLICKR30K_REPO
from .flickr30k_full import FOLDER as FLICKR30K_FULL_FOLDER
from .flickr30k_full import IMAGES as FLICKR30K_IMAGES

HUB_ORGANISATION = "clip-benchmark"
DATACOMP_ORGANISATION = "djghosh"
DATACOMP_COPIES: tuple[str, ...] = ("wilds/iwildcam", "wilds/camelyon17", "wilds/fmow", "fairness/dollar_street",
                                    "fairness/geode")
# Dataset names as CLIP_benchmark writes them: lower-case words, digits, "_", "-", "." and at most one "/".
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)?$")


def hub_folder(name: str) -> str:
    """``wds_<name>`` with ``/`` written ``-``: the repository and local folder name; DataError for a bad name."""
    if not _NAME.match(name) or ".." in name:
        raise DataError(f"'{name}' is not a CLIP_benchmark dataset name (e.g. cifar10, vtab/caltech101)")
    return "wds_" + name.replace("/", "-")


def fetch_dataset(name: str, root: str | Path, split: str = "test",
                  download: Callable[..., Any] | None = None) -> tuple[Path, bool]:
    """Put ``clip-benchmark/wds_<name>``'s `split` and metadata under `root` (DataComp's copy for the tasks of
    `DATACOMP_COPIES`); returns (folder, whether it was downloaded now). A folder whose split already has its ``nshards.txt`` is left as it is.

    `download` is ``huggingface_hub.snapshot_download`` unless given (tests pass a stand-in). ``winoground`` goes to
    `fetch_winoground`, ``nlphuji/flickr30k`` to `fetch_flickr30k_full`.
    Raises:
        DataError: a bad name, no huggingface_hub, or a failed download (one line naming the repository).
    """
    if name == "winoground":
        if split != "test":
            raise DataError(f"winoground has only a test split, not '{split}'")
        return fetch_winoground(root, download)
    if name == FLICKR30K_REPO:
        if split != "test":
            raise DataError(f"{FLICKR30K_REPO} has one split, test (all 31,014 images), not '{split}'")
        return fetch_flickr30k_full(root, download)
    folder = hub_folder(name)
    organisation = HUB_ORGANISATION
    if name in DATACOMP_COPIES:
        folder, organisation = f"wds_{name.removeprefix('fairness/').replace('/', '-')}_test", DATACOMP_ORGANISATION
    target = Path(root).expanduser() / folder
    if (target / split / "nshards.txt").is_file():
        return target, False
    repo = f"{organisation}/{folder}"
    _download(download, repo, target, [f"{split}/*", "*.txt"])
    if not (target / split / "nshards.txt").is_file():
        raise DataError(f"{repo} has no {split}/nshards.txt after the download (is '{split}' one of its splits?)")
    return target, True


def fetch_winoground(root: str | Path, download: Callable[..., Any] | None = None) -> tuple[Path, bool]:
    """Put Winoground under ``root/winoground`` (see the module docstring); returns (folder, whether it was downloaded
    now). A folder that already has the examples file and the image folder is left as it is.

    Raises:
        DataError: no huggingface_hub, a failed download (gated: the message says how to get access), or an archive
            without the ``images/`` folder.
    """
    target = Path(root).expanduser() / "winoground"
    if (target / WINOGROUND_EXAMPLES).is_file() and (target / WINOGROUND_IMAGES).is_dir():
        return target, False
    archive = target / "data" / "images.zip"
    _download(download, WINOGROUND_REPO, target, [WINOGROUND_EXAMPLES, "data/images.zip"],
              hint=" (a gated dataset: accept its terms on huggingface.co, then run `huggingface-cli login`)")
    if not (target / WINOGROUND_EXAMPLES).is_file() or not archive.is_file():
        raise DataError(f"{WINOGROUND_REPO} has no {WINOGROUND_EXAMPLES} and data/images.zip after the download")
    _extract(archive, archive.parent)
    if not (target / WINOGROUND_IMAGES).is_dir():
        raise DataError(f"{archive} holds no images/ folder; extract its images to {target / WINOGROUND_IMAGES}")
    return target, True


def fetch_flickr30k_full(root: str | Path, download: Callable[..., Any] | None = None) -> tuple[Path, bool]:
    """Put nlphuji/flickr30k under ``root/nlphuji_flickr30k`` (see the module docstring); returns (folder, whether it
    was downloaded now). A folder that already has the annotation file and the image folder is left as it is.

    Raises:
        DataError: no huggingface_hub, a failed download, or an archive without the ``flickr30k-images/`` folder.
    """
    target = Path(root).expanduser() / FLICKR30K_FULL_FOLDER
    if (target / FLICKR30K_ANNOTATIONS).is_file() and (target / FLICKR30K_IMAGES).is_dir():
        return target, False
    archive = target / FLICKR30K_ARCHIVE
    _download(download, FLICKR30K_REPO, target, [FLICKR30K_ANNOTATIONS, FLICKR30K_ARCHIVE])
    if not (target / FLICKR30K_ANNOTATIONS).is_file() or not archive.is_file():
        raise DataError(f"{FLICKR30K_REPO} has no {FLICKR30K_ANNOTATIONS} and {FLICKR30K_ARCHIVE} after the download")
    _extract(archive, target)
    if not (target / FLICKR30K_IMAGES).is_dir():
        raise DataError(f"{archive} holds no {FLICKR30K_IMAGES}/ folder; extract its images to "
                        f"{target / FLICKR30K_IMAGES}")
    return target, True


def _extract(archive: Path, into: Path) -> None:
    """Unzip `archive` into `into`; DataError if it cannot be read."""
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(into)  # zipfile drops absolute paths and ".." from member names
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"cannot extract {archive}: {type(exc).__name__}: {exc}") from None


def _download(download: Callable[..., Any] | None, repo: str, target: Path, patterns: list[str],
              hint: str = "") -> None:
    """``snapshot_download`` (or `download`) of a dataset repository's `patterns` into `target`; DataError if it
    fails."""
    if download is None:
        try:
            from huggingface_hub import snapshot_download as download
        except ImportError:
            raise DataError("data fetch needs huggingface_hub (pip install huggingface_hub)") from None
    try:
        download(repo_id=repo, repo_type="dataset", local_dir=str(target), allow_patterns=patterns)
    except Exception as exc:  # network, authentication, missing repository: the library's own error types vary
        raise DataError(f"could not fetch {repo}{hint}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
