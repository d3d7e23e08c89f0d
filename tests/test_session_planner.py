"""The evaluation session (feature store) and the suite planner, tested directly on a random Micro model.

Expected values come from brute force: each image encoded alone by open_clip's `encode_image`, each label read
from the shapes dataset item by item, each planned task listed by hand from the suite's definition.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maskclip_bench import evaluators
from maskclip_bench.evaluation import session as session_module
from maskclip_bench.evaluation.feature_cache import BASE_KIND
from maskclip_bench.evaluation.model_loading import load_live
from maskclip_bench.evaluation.session import EvalSession
from maskclip_bench.evaluation.suites import plan_suite
from maskclip_bench.evaluation.tasks import LINEAR_PROBE, RETRIEVAL, ZEROSHOT
from maskclip_core.data.shapes import HELD_OUT_PAIRS
from maskclip_core.errors import DataError
from maskclip_core.towers import create_clip

MODEL = "MaskCLIP-Micro-8"
N = 24


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    return load_live(create_clip(MODEL), model_name=MODEL, train_config={}, where="test", step=0)


@pytest.fixture
def passes(monkeypatch):
    """Each encoding pass the session runs: the feature flags it asked for."""
    seen: list[dict[str, bool]] = []
    real = evaluators.encode_images

    def counting(model, loader, device="cpu", **flags):
        seen.append(flags)
        return real(model, loader, device, **flags)

    monkeypatch.setattr(session_module, "encode_images", counting)
    return seen


def _session(loaded) -> EvalSession:
    return EvalSession(loaded, batch_size=10, seed=0)


def test_tasks_on_one_rendered_set_share_one_pass_with_their_own_rows_and_labels(loaded, passes):
    session = _session(loaded)
    shape, color, comp, retrieval = (session.build(f"shapes/{t}:test={N}")[0]
                                     for t in ("shape", "color", "compositional", "retrieval"))
    for ds in (shape, color, comp, retrieval):
        session.plan(ds, "test", {BASE_KIND})
    got = {ds.name: session.features(ds, "test", {BASE_KIND}) for ds in (shape, color, comp, retrieval)}
    assert len(passes) == 1  # four tasks, one pass over the shared images
    assert session.take_status() == "memory+off"

    base = shape.dataset.base  # the rendered images all four views show
    with torch.no_grad():
        alone = torch.cat([F.normalize(loaded.model.encode_image(base[i]["image"][None]), dim=-1) for i in range(N)])
    assert torch.allclose(got[shape.name][BASE_KIND], alone, atol=1e-5)
    assert got[shape.name]["targets"].tolist() == [base[i]["shape"] for i in range(N)]
    assert got[color.name]["targets"].tolist() == [base[i]["color"] for i in range(N)]
    assert got[retrieval.name]["captions"] == [[base[i]["caption"]] for i in range(N)]
    # compositional: the rows whose main object is a held-out pair, labelled shape_color.
    rows = [i for i in range(N) if (base[i]["shape"], base[i]["color"]) in HELD_OUT_PAIRS]
    assert rows and list(comp.dataset.indices) == rows
    assert torch.allclose(got[comp.name][BASE_KIND], alone[rows], atol=1e-5)
    assert got[comp.name]["targets"].tolist() == [base[i]["shape_color"] for i in rows]


def test_announced_kinds_are_computed_in_the_first_pass(loaded, passes):
    session = _session(loaded)
    ds = session.build(f"shapes/shape_color:test={N},train=20,val=10")[0]
    session.plan(ds, "test", {BASE_KIND})
    session.plan(ds, "test", {BASE_KIND, "pooled_features"})  # a linear probe will ask for these later
    first = session.features(ds, "test", {BASE_KIND})
    assert passes == [{"pooled_pre_projection": True, "with_patch_tokens": False}]
    pooled = session.features(ds, "test", {"pooled_features"})
    assert len(passes) == 1 and session.take_status() == "memory+off"
    assert pooled["pooled_features"].shape[0] == first[BASE_KIND].shape[0] == N
    # A kind nobody announced costs a second pass, which keeps the kinds already held.
    session.features(ds, "test", {"patch_tokens"})
    assert passes[1] == {"pooled_pre_projection": True, "with_patch_tokens": True}


def test_a_split_the_dataset_lacks_is_a_user_error(loaded):
    session = _session(loaded)
    ds = session.build(f"shapes/shape:test={N}")[0]
    with pytest.raises(DataError, match="has no train split"):
        session.features(ds, "train", {BASE_KIND})


def _listed(planned) -> list[tuple[str, str, dict]]:
    return [(p.task, p.dataset.name, p.options) for p in planned]


def test_quick_suite_plans_its_three_tasks_with_the_shapes_options_each_uses(loaded):
    session = _session(loaded)
    planned = plan_suite(session, "quick", ["shapes:test=30,train=40,val=20"])
    # Zero-shot and retrieval read only the test size; the probe keeps its train and val sizes.
    assert _listed(planned) == [
        (ZEROSHOT, "shapes/shape_color:test=30", {"templates": None}),
        (RETRIEVAL, "shapes/retrieval:test=30", {}),
        (LINEAR_PROBE, "shapes/shape_color:test=30,train=40,val=20", {"features": "pre"}),
    ]
    assert len(planned[0].dataset.dataset) == 30


def test_extra_datasets_get_the_tasks_that_fit_them(loaded):
    session = _session(loaded)
    planned = plan_suite(session, None, [f"shapes/shape:test={N}", f"shapes/shape_color:test={N},train=20,val=10",
                                         f"shapes/retrieval:test={N}"], templates="simple")
    assert [(task, name) for task, name, _ in _listed(planned)] == [
        (ZEROSHOT, f"shapes/shape:test={N}"),  # no train split: zero-shot alone
        (ZEROSHOT, f"shapes/shape_color:test={N},train=20,val=10"),
        (LINEAR_PROBE, f"shapes/shape_color:test={N},train=20,val=10"),
        (RETRIEVAL, f"shapes/retrieval:test={N}"),
    ]
    assert planned[0].options == {"templates": "simple"}


def test_planner_user_errors(loaded):
    session = _session(loaded)
    with pytest.raises(DataError, match="unknown suite 'fast'"):
        plan_suite(session, "fast")
    with pytest.raises(DataError, match="nothing to evaluate"):
        plan_suite(session, None, [])
