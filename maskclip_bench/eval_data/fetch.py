"""`data fetch`: CLIP_benchmark's webdataset copy of a dataset from the Hugging Face hub into a dataset root.

CLIP_benchmark publishes its evaluation sets as ``clip-benchmark/wds_<name>`` dataset repositories (``/`` in the name
written ``-``), in exactly the layout ``clip_benchmark_wds:DIR`` reads. Fetching one is
``huggingface_hub.snapshot_download`` of the split's shards and the metadata files into ``ROOT/wds_<name>``, where
``eval --suite NAME --dataset-root ROOT`` finds it. Nothing else in the project downloads, and only this command does
(on the user's request).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from maskclip_core.errors import DataError

HUB_ORGANISATION = "clip-benchmark"
# Dataset names as CLIP_benchmark writes them: lower-case words, digits, "_", "-", "." and at most one "/".
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)?$")


def hub_folder(name: str) -> str:
    """``wds_<name>`` with ``/`` written ``-``: the repository and local folder name; DataError for a bad name."""
    if not _NAME.match(name) or ".." in name:
        raise DataError(f"'{name}' is not a CLIP_benchmark dataset name (e.g. cifar10, vtab/caltech101)")
    return "wds_" + name.replace("/", "-")


def fetch_dataset(name: str, root: str | Path, split: str = "test",
                  download: Callable[..., Any] | None = None) -> tuple[Path, bool]:
    """Put ``clip-benchmark/wds_<name>``'s `split` and metadata under `root`; returns (folder, whether it was
    downloaded now). A folder whose split already has its ``nshards.txt`` is left as it is.

    `download` is ``huggingface_hub.snapshot_download`` unless given (tests pass a stand-in).
    Raises:
        DataError: a bad name, no huggingface_hub, or a failed download (one line naming the repository).
    """
    folder = hub_folder(name)
    target = Path(root).expanduser() / folder
    if (target / split / "nshards.txt").is_file():
        return target, False
    if download is None:
        try:
            from huggingface_hub import snapshot_download as download
        except ImportError:
            raise DataError("data fetch needs huggingface_hub (pip install huggingface_hub)") from None
    repo = f"{HUB_ORGANISATION}/{folder}"
    try:
        download(repo_id=repo, repo_type="dataset", local_dir=str(target), allow_patterns=[f"{split}/*", "*.txt"])
    except Exception as exc:  # network, authentication, missing repository: the library's own error types vary
        raise DataError(f"could not fetch {repo}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                        ) from None
    if not (target / split / "nshards.txt").is_file():
        raise DataError(f"{repo} has no {split}/nshards.txt after the download (is '{split}' one of its splits?)")
    return target, True
