"""Run a maskclip-bench command with the contrastive loss term removed, to show that `check` catches it.

Test-only: there is no config switch for this (the method always has its contrastive term), so this wrapper
replaces the term in `maskclip_core.model` with 0 * itself (same graph, no gradient, logged as 0) for the
process it runs in; the library's code is unchanged. Usage:

    python tests/tools/without_contrastive.py check --baseline results/baselines/ci.json
"""
from __future__ import annotations

import sys

import maskclip_core.model as model_module
from maskclip_bench.cli import main

_real_contrastive_loss = model_module.contrastive_loss


def _zero_contrastive_loss(*args, **kwargs):
    """The real term times 0: the step still runs the contrastive forward, but the term neither trains nor counts."""
    return 0.0 * _real_contrastive_loss(*args, **kwargs)


if __name__ == "__main__":
    model_module.contrastive_loss = _zero_contrastive_loss
    main(sys.argv[1:])
