"""The compositional suite (issue 14): SugarCrepe and Winoground read from the layouts the test writes (a few tiny
COCO-like jpgs with two of SugarCrepe's seven annotation files; a Winoground repository snapshot of three examples),
scored as CLIP_benchmark's image_caption_selection scores them (checked by hand on constructed features, and
against CLIP_benchmark's own `evaluate` and SugarCrepe reader on the same fixture and model), and run end to end
through `eval --suite compositional` (missing tasks listed, partial averages, a rerun skipping finished tasks)
and `report --suite compositional`."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from maskclip_bench.evaluation.standard_suites import COMPOSITIONAL, locate
from maskclip_bench.evaluators.caption_selection import selection_metrics

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}


def _image(path: Path, colour: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), COLOURS[colour]).save(path)


@pytest.fixture(scope="module")
def compositional_root(tmp_path_factory) -> Path:
    """sugar_crepe/ with val2017/ and swap_att.json + add_obj.json (add_obj names one image that is not there), and
    winoground/data/ with examples.jsonl and images/*.png."""
    root = tmp_path_factory.mktemp("compositional")
    sugar = root / "sugar_crepe"
    for i, colour in enumerate(COLOURS):
        _image(sugar / "val2017" / f"00000000000{i}.jpg", colour)
    swap = {str(10 + i): {"filename": f"00000000000{i}.jpg", "caption": f"a photo of the {c} square.",
                          "negative_caption": f"a photo of the {o} square."}
            # The third pair is mislabelled (the image is blue): a trained model prefers the "negative" there.
            for i, (c, o) in enumerate([("red", "green"), ("green", "blue"), ("yellow", "blue")])}
    add = {"7": {"filename": "000000000003.jpg", "caption": "a yellow square.", "negative_caption": "a red square."},
           "3": {"filename": "000000000000.jpg", "caption": "a red square.", "negative_caption": "a red circle."},
           "9": {"filename": "000000000001.jpg", "caption": "a green square.", "negative_caption": "a blue square."},
           "5": {"filename": "000000000099.jpg", "caption": "a gone square.", "negative_caption": "no square."}}
    (sugar / "swap_att.json").write_text(json.dumps(swap))
    (sugar / "add_obj.json").write_text(json.dumps(add))
    wino = root / "winoground" / "data"
    pairs = [("red", "blue"), ("green", "yellow"), ("yellow", "red")]
    lines = []
    for i, (a, b) in enumerate(pairs):
        _image(wino / "images" / f"ex_{i}_img_0.png", a)
        _image(wino / "images" / f"ex_{i}_img_1.png", b)
        lines.append(json.dumps({"id": i, "image_0": f"ex_{i}_img_0", "image_1": f"ex_{i}_img_1",
                                 "caption_0": f"a {a} picture", "caption_1": f"a {b} picture", "tag": "x"}))
    (wino / "examples.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_compositional_tasks_and_metrics():
    by_key = {t.key: (t.title, t.metric, t.groups) for t in COMPOSITIONAL}
    assert by_key["winoground"] == ("Winoground", "acc", ())  # the group score
    assert by_key["sugar_crepe/replace_rel"] == ("SugarCrepe Replace-Rel", "text_acc",
                                                 ("SugarCrepe", "SugarCrepe replace"))
    assert sorted(k for k, (_, metric, _) in by_key.items() if metric == "text_acc") == [
        f"sugar_crepe/{t}" for t in ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att",
                                     "swap_obj")]
    swap = [k for k, (_, _, groups) in by_key.items() if "SugarCrepe swap" in groups]
    assert swap == ["sugar_crepe/swap_att", "sugar_crepe/swap_obj"]


def test_selection_metrics_by_hand():
    """Images are the basis vectors, so caption c's feature is column c of the wanted image-by-caption scores."""

    def instance(scores):
        s = torch.tensor(scores)
        return torch.eye(s.shape[0]), s.t()

    # SugarCrepe-like (1 image, [positive, negative]): the positive wins, loses, ties (argmax: the lower index wins).
    sugar = [instance([[0.7, 0.3]]), instance([[0.2, 0.6]]), instance([[0.5, 0.5]])]
    metrics = selection_metrics(torch.stack([i for i, _ in sugar]), torch.stack([t for _, t in sugar]))
    assert metrics == pytest.approx({"text_acc": 2 / 3, "image_acc": 1.0, "acc": 2 / 3})
    # Winoground-like 2 x 2: all right; image 1 prefers caption 0 (text wrong, image right); both wrong.
    wino = [instance([[0.9, 0.1], [0.2, 0.8]]), instance([[0.9, 0.5], [0.8, 0.6]]),
            instance([[0.1, 0.9], [0.8, 0.2]])]
    metrics = selection_metrics(torch.stack([i for i, _ in wino]), torch.stack([t for _, t in wino]))
    assert metrics == pytest.approx({"text_acc": 1 / 3, "image_acc": 2 / 3, "acc": 1 / 3})


@pytest.fixture(scope="module")
def session(tiny_checkpoint):
    from maskclip_bench.evaluation.model_loading import load_model
    from maskclip_bench.evaluation.session import EvalSession

    return EvalSession(load_model(str(tiny_checkpoint)), batch_size=2)  # several batches over the few images


def _clip_benchmark_metrics(session, dataset) -> dict[str, float]:
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    from clip_benchmark.metrics import image_caption_selection
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=2, collate_fn=image_captions_collate_fn)
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        return image_caption_selection.evaluate(session.loaded.model, loader, session.loaded.tokenizer, "cpu",
                                                amp=False)


@pytest.mark.parametrize("name, folder, count, bad", [("sugar_crepe/swap_att", "sugar_crepe", 3, 0),
                                                      ("sugar_crepe/add_obj", "sugar_crepe", 3, 1),
                                                      ("winoground", "winoground", 3, 0)])
def test_scores_agree_with_clip_benchmark(session, compositional_root, one_thread, name, folder, count, bad):
    from maskclip_bench.evaluation.tasks import run_caption_selection

    ds = session.build(f"clip_benchmark:{name}@{compositional_root / folder}")[0]
    assert (ds.task, ds.num_samples, ds.bad_samples) == ("caption_selection", count, bad)
    result = run_caption_selection(session, ds)
    assert result.num_samples == count and result.bad_samples == bad
    # CLIP_benchmark's evaluate on our reader's items (encoding every instance's images itself).
    assert result.metrics == _clip_benchmark_metrics(session, ds.dataset)
    if name == "winoground":  # an instance is [image_0, image_1] with [caption_0, caption_1]
        images, captions = ds.dataset[0]
        red = session.loaded.preprocess(Image.open(compositional_root / folder / "data/images/ex_0_img_0.png"))
        assert captions == ["a red picture", "a blue picture"] and torch.equal(images[0], red)
    if name == "sugar_crepe/swap_att":
        assert 0 < result.metrics["text_acc"] < 1  # the fixture tells a swapped positive and negative apart
        # ... and on CLIP_benchmark's own SugarCrepe reader of the same folder (its builder is kept from fetching).
        from clip_benchmark.datasets.builder import build_dataset

        from maskclip_bench.eval_data.cb_datasets import _no_commands

        with _no_commands():
            theirs = build_dataset(name, root=str(compositional_root / folder), transform=session.loaded.preprocess,
                                   download=False, task="image_caption_selection")
        assert result.metrics == _clip_benchmark_metrics(session, theirs)


def test_sugar_crepe_tasks_share_one_image_set(session, compositional_root, one_thread):
    from maskclip_bench.evaluation.session import EvalSession
    from maskclip_bench.evaluation.tasks import run_caption_selection

    session = EvalSession(session.loaded, batch_size=2)  # nothing encoded yet
    add, swap = (session.build(f"clip_benchmark:sugar_crepe/{t}@{compositional_root / 'sugar_crepe'}")[0]
                 for t in ("add_obj", "swap_att"))
    # The pool: every image either file names that is there (add_obj's first, in file order; its missing one not).
    assert add.dataset.image_names == [f"val2017/00000000000{i}.jpg" for i in (3, 0, 1, 2)]
    assert add.dataset.shared_image_set()[0] == swap.dataset.shared_image_set()[0]
    first, second = run_caption_selection(session, add), run_caption_selection(session, swap)
    assert (first.feature_cache, second.feature_cache) == ("off", "memory")  # encoded once, for both tasks
    assert (first.num_samples, first.bad_samples, second.num_samples) == (3, 1, 3)


def test_eval_compositional_lists_missing_resumes_and_reports(tiny_checkpoint, compositional_root, tmp_path,
                                                              eval_cli):
    results = tmp_path / "runs"
    args = ("eval", "--ckpt", tiny_checkpoint, "--suite", "compositional", "--dataset-root", compositional_root,
            "--results-dir", results, "--no-cache", "--threads", 1, "--batch-size", 4)
    code, out, err = eval_cli(*args)
    assert code == 0, err
    assert "missing under" in err and "(5 of 8)" in err
    assert (f"SugarCrepe Replace-Rel: put COCO's val2017 images (http://images.cocodataset.org/zips/val2017.zip, "
            f"unzipped) in {compositional_root}/sugar_crepe/val2017/ and replace_rel.json "
            "(https://raw.githubusercontent.com/RAIVNLab/sugar-crepe/main/data/replace_rel.json) in "
            f"{compositional_root}/sugar_crepe/") in err
    assert "SugarCrepe Swap-Att:" not in err and "Winoground:" not in err
    records = {json.loads(p.read_text())["dataset"]: json.loads(p.read_text()) for p in results.glob("*.json")}
    assert len(records) == 3 and {r["task"] for r in records.values()} == {"image_caption_selection"}
    swap = records[f"clip_benchmark:sugar_crepe/swap_att@{compositional_root}/sugar_crepe"]["metrics"]["text_acc"]
    add_obj = records[f"clip_benchmark:sugar_crepe/add_obj@{compositional_root}/sugar_crepe"]
    wino = records[f"clip_benchmark:winoground@{compositional_root}/winoground"]["metrics"]
    assert add_obj["bad_samples"] == 1 and add_obj["num_samples"] == 3
    assert set(wino) == {"text_acc", "image_acc", "acc"}
    add = add_obj["metrics"]["text_acc"]
    # The averages printed are the main metrics by hand: SugarCrepe's text_acc, Winoground's group score (acc).
    assert f"compositional Average: {(swap + add + wino['acc']) / 3:.4f} (partial: 3/8)" in out
    assert f"compositional SugarCrepe: {(swap + add) / 2:.4f} (partial: 2/7)" in out
    assert f"compositional SugarCrepe swap: {swap:.4f} (partial: 1/2)" in out
    assert "compositional SugarCrepe replace: n/a" in out

    code, out2, err2 = eval_cli(*args)  # a rerun evaluates nothing again
    assert code == 0, err2
    assert len(list(results.glob("*.json"))) == 3 and "3 task(s) had a record" in err2
    assert f"compositional Average: {(swap + add + wino['acc']) / 3:.4f} (partial: 3/8)" in out2

    report = tmp_path / "tables"
    code, out3, err3 = eval_cli("report", "--suite", "compositional", "--results-dir", results, "--out", report)
    assert code == 0, err3
    rows = list(csv.DictReader((report / "suite_compositional.csv").open()))
    assert len(rows) == 1 and rows[0]["tasks scored"] == "3/8"
    assert float(rows[0]["Average"]) == pytest.approx((swap + add + wino["acc"]) / 3)
    assert float(rows[0]["SugarCrepe Swap-Att"]) == pytest.approx(swap)
    assert float(rows[0]["Winoground"]) == pytest.approx(wino["acc"]) and rows[0]["SugarCrepe Add-Att"] == ""
    assert float(rows[0]["SugarCrepe add"]) == pytest.approx(add)
    markdown = (report / "suite_compositional.md").read_text()
    assert "Winoground, its group score" in markdown and "None" not in markdown  # unscored tasks are blank cells
    # The plain benchmark tables take the new task's records too (one column per dataset and metric).
    code, out4, err4 = eval_cli("report", "--results-dir", results, "--out", report, "--ablations-dir", tmp_path / "no")
    assert code == 0, err4
    assert "acc" in (report / "benchmark.csv").read_text()


def test_data_fetch_winoground_unpacks_what_the_suite_reads(tmp_path, eval_cli, monkeypatch):
    """The download is a stand-in writing what the hub repository holds (examples.jsonl, images.zip)."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        data = Path(kwargs["local_dir"]) / "data"
        data.mkdir(parents=True)
        (data / "examples.jsonl").write_text(json.dumps({"id": 0, "image_0": "ex_0_img_0", "image_1": "ex_0_img_1",
                                                         "caption_0": "a", "caption_1": "b"}) + "\n")
        with zipfile.ZipFile(data / "images.zip", "w") as zf:
            for name in ("ex_0_img_0", "ex_0_img_1"):
                buffer = io.BytesIO()
                Image.new("RGB", (4, 4)).save(buffer, format="PNG")
                zf.writestr(f"images/{name}.png", buffer.getvalue())
        return str(data.parent)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    code, out, err = eval_cli("data", "fetch", "--suite", "compositional", "--dataset-root", tmp_path)
    assert code == 0, err
    assert calls == [{"repo_id": "facebook/winoground", "repo_type": "dataset",
                      "local_dir": str(tmp_path / "winoground"),
                      "allow_patterns": ["data/examples.jsonl", "data/images.zip"]}]
    assert "not fetched here: SugarCrepe Swap-Obj: put COCO's val2017 images" in err
    assert [t.key for t, _ in locate(COMPOSITIONAL, tmp_path).found] == ["winoground"]
    code, out, err = eval_cli("data", "fetch", "winoground", "--dataset-root", tmp_path)
    assert code == 0 and "already there: winoground" in out and len(calls) == 1
