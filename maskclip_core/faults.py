"""Fault injection for the reliability tests: kill this process at a named point of a given step.

Set ``MASKCLIP_FAULT=<point>@<step>`` (e.g. ``train_step@5``, ``checkpoint_write@6``) and the process sends
itself SIGKILL when it reaches that point, the way an OOM killer or a lost node would end it: no handler,
no cleanup. Unset (always, outside tests) every call is a dictionary lookup.
"""
from __future__ import annotations

import os
import signal

ENV = "MASKCLIP_FAULT"


def point(name: str, step: int) -> None:
    """Die here if ``MASKCLIP_FAULT`` names this point and step."""
    spec = os.environ.get(ENV)
    if spec and spec == f"{name}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
