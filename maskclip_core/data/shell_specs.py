"""Which data locations may run a shell command, and who allowed it.

webdataset opens ``pipe:CMD`` shards by running ``CMD`` in a shell (``http(s)://``, ``gs://``, ... URLs go to
``curl``/``gsutil`` as one argument, without a shell). ``pipe:`` is a real feature (streaming from object
stores, as open_clip users do), but a shell command must run only when the user typed it:

* ``--data`` on the command line is typed by the user: the CLI calls :func:`trust_shell_location` for it;
* a ``--config`` file's spec is trusted only with the explicit ``--allow-pipe`` flag;
* a baseline JSON, a checkpoint's or run folder's saved config and a record are never trusted.

Untrusted ``pipe:`` locations are refused with one line. The trust
list lives in the environment variable :data:`TRUST_ENV`, so spawned worker processes (ablation cells, data
loader workers) inherit the parent's decision; anyone who can set it can already run commands.
"""
from __future__ import annotations

import json
import os
import re

from maskclip_core.errors import DataError

TRUST_ENV = "MASKCLIP_TRUSTED_SHELL_DATA"
PIPE_PREFIX = "pipe:"
# Characters a shell interprets: a path holding one may be pasted into a shell command by a library.
_SHELL_META = re.compile(r"[\s'\"`$;&|<>(){}\\*?!#~]")


def is_remote_location(url: str) -> bool:
    """True for locations webdataset opens itself (``pipe:`` commands, ``scheme://`` URLs): nothing to stat."""
    return url.startswith(PIPE_PREFIX) or "://" in url


def has_shell_metacharacters(text: str) -> bool:
    """True if ``text`` holds a character a shell would interpret (quotes, ``;``, ``$``, spaces, ...)."""
    return bool(_SHELL_META.search(text))


def _trusted() -> list[str]:
    try:
        value = json.loads(os.environ.get(TRUST_ENV, "[]"))
    except ValueError:
        return []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def trust_shell_location(location: str) -> None:
    """Allow ``location`` (a shard pattern, as written after ``wds:``) to run shell commands in this process
    and the processes it starts. Call it only for text the user typed (or opted in to with ``--allow-pipe``)."""
    trusted = _trusted()
    if location not in trusted:
        os.environ[TRUST_ENV] = json.dumps(trusted + [location])


def check_shell_location(pattern: str, urls: list[str]) -> None:
    """Raise DataError if a shard URL of ``pattern`` would run a shell command the user did not type
    (a ``pipe:`` URL while ``pattern`` is not trusted)."""
    if pattern in _trusted():
        return
    for url in urls:
        if url.startswith(PIPE_PREFIX):
            raise DataError(f"refusing data location {url[:80]!r}: 'pipe:' runs a shell command, which is only "
                            "accepted from --data on the command line (or a --config file with --allow-pipe)")
