"""WinoGAViL (DataComp's visual-association task): the prompt and the Jaccard metrics by hand and by brute force,
the reader on a layout the test writes (WinoGAViL-experiments' csv and images), scores against DataComp's own
procedure written out with numpy and sklearn, and the task found and scored in the datacomp suite."""
from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import jaccard_score

from maskclip_bench.eval_data.winogavil import build_winogavil
from maskclip_bench.evaluators.association import association_metrics, association_prompt
from maskclip_core.errors import DataError

NAMES = [f"thing{i}" for i in range(12)] + ["tea party"]
ROWS = [  # cue, candidates, associations
    ("Eagle", NAMES[:5], NAMES[1:3]),
    ("bald", NAMES[2:8], NAMES[2:5]),
    ("forest", NAMES[:10], [NAMES[0], NAMES[9], NAMES[4]]),
    ("ocean", NAMES[1:13], NAMES[5:7]),  # 12 candidates, one of them "tea party"
    ("missing", NAMES[:4] + ["nowhere"], NAMES[:2]),  # an image that is not there: the instance is skipped
]


def test_prompt_is_datacomps():
    assert association_prompt("bald") == "A bald"
    assert association_prompt("Eagle") == "An eagle"  # lower-cased, "An" before a vowel
    assert association_prompt("tea party") == "A tea party"


def test_jaccard_metrics_by_hand():
    # k = 2 picks {0, 2}; truth {0, 3}: 1 / 3. Second instance, k = 1 picks {1} = truth: 1.
    scores = [torch.tensor([0.9, 0.1, 0.8, 0.3, 0.2]), torch.tensor([0.1, 0.9, 0.3, 0.2, 0.0, 0.5])]
    truths = [torch.tensor([True, False, False, True, False]),
              torch.tensor([False, True, False, False, False, False])]
    metrics = association_metrics(scores, truths)
    assert metrics == pytest.approx({"avg_jaccard_score": (1 / 3 + 1) / 2, "jaccard_score_5": 1 / 3,
                                     "jaccard_score_6": 1.0, "jaccard_score_5-6": (1 / 3 + 1) / 2})
    assert "jaccard_score_10-12" not in metrics  # no large game: left out, not NaN


def test_jaccard_metrics_against_a_brute_force_loop():
    rng = random.Random(0)
    scores, truths, expected = [], [], {5: [], 6: [], 10: [], 12: []}
    for _ in range(40):
        n = rng.choice([5, 6, 10, 12])
        k = rng.randint(2, 5 if n > 6 else 3)
        score = [rng.random() for _ in range(n)]
        truth = set(rng.sample(range(n), k))
        picked = set(sorted(range(n), key=lambda i: -score[i])[:k])
        expected[n].append(len(picked & truth) / len(picked | truth))
        scores.append(torch.tensor(score))
        truths.append(torch.tensor([i in truth for i in range(n)]))
    metrics = association_metrics(scores, truths)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert metrics["jaccard_score_10-12"] == pytest.approx(mean(expected[10] + expected[12]))
    assert metrics["jaccard_score_5-6"] == pytest.approx(mean(expected[5] + expected[6]))
    assert metrics["jaccard_score_12"] == pytest.approx(mean(expected[12]))
    assert metrics["avg_jaccard_score"] == pytest.approx(mean(sum(expected.values(), [])))


def _write_layout(folder) -> None:
    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(NAMES):
        pixels = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / (f"{name}.jpg" if i == 3 else f"{name}.png"))  # .jpg also found
    with (folder / "winogavil_dataset.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["", "candidates", "cue", "associations", "num_associations", "num_candidates", "ID"])
        for i, (cue, candidates, associations) in enumerate(ROWS):
            writer.writerow([i, json.dumps(candidates), cue, json.dumps(associations), len(associations),
                             len(candidates), i])


@pytest.fixture(scope="module")
def winogavil_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    _write_layout(root / "winogavil")
    return root


def test_reader_gives_datacomps_instances(winogavil_root):
    ds = build_winogavil(winogavil_root / "winogavil", transform=None)
    assert (ds.task, ds.num_samples, ds.bad_samples) == ("association", 4, 1)
    images, cue, truth = ds.dataset[1]
    assert cue == "bald" and len(images) == 6 and truth.tolist() == [True, True, True, False, False, False]
    assert ds.dataset.instances[0].images[3] == "images/thing3.jpg"
    # Shared candidates are one image (one row) however many instances show them.
    assert len(ds.dataset.image_names) == len(NAMES) and ds.dataset.rows[3].tolist() == list(range(1, 13))


def test_reader_errors_are_one_line(tmp_path):
    folder = tmp_path / "winogavil"
    _write_layout(folder)
    text = (folder / "winogavil_dataset.csv").read_text()
    (folder / "winogavil_dataset.csv").write_text(text.replace('"[""thing1"", ""thing2""]"', '"[""elsewhere""]"'))
    with pytest.raises(DataError, match="line 2: needs a cue and associations among its candidates"):
        build_winogavil(folder, transform=None)
    (folder / "winogavil_dataset.csv").write_text(text.replace('"[""thing1"", ""thing2""]"', '"[""../../x""]"'))
    with pytest.raises(DataError):
        build_winogavil(folder, transform=None)
    with pytest.raises(DataError, match="missing WinoGAViL annotation file"):
        build_winogavil(tmp_path, transform=None)


def _datacomp_scores(loaded, dataset) -> dict[str, float]:
    """DataComp's wino_eval procedure, written out: per instance, encode the candidates and the prompt, take the
    numpy argsort's last k, sklearn's jaccard_score, then the means by candidate count."""
    scores, sizes = [], []
    with torch.no_grad():
        for i in range(len(dataset)):
            images, cue, truth = dataset[i]
            image_features = torch.nn.functional.normalize(loaded.model.encode_image(images), dim=-1)
            text = loaded.tokenizer([association_prompt(cue)])
            text_features = torch.nn.functional.normalize(loaded.model.encode_text(text), dim=-1)
            logits = (text_features @ image_features.T).squeeze(0).numpy()
            top = np.argsort(logits)[-int(truth.sum()):]
            scores.append(jaccard_score(truth.numpy(), np.isin(np.arange(len(images)), top)))
            sizes.append(len(images))
    scores, sizes = np.array(scores), np.array(sizes)
    return {"avg_jaccard_score": scores.mean(), "jaccard_score_5": scores[sizes == 5].mean(),
            "jaccard_score_6": scores[sizes == 6].mean(), "jaccard_score_10": scores[sizes == 10].mean(),
            "jaccard_score_12": scores[sizes == 12].mean(), "jaccard_score_5-6": scores[sizes <= 6].mean(),
            "jaccard_score_10-12": scores[sizes >= 10].mean()}


def test_scores_agree_with_datacomps_procedure(tiny_checkpoint, winogavil_root, one_thread):
    from maskclip_bench.evaluation.model_loading import load_model
    from maskclip_bench.evaluation.session import EvalSession
    from maskclip_bench.evaluation.tasks import run_association

    session = EvalSession(load_model(str(tiny_checkpoint)), batch_size=5)  # several batches over the 13 images
    ds = session.build(f"winogavil:{winogavil_root / 'winogavil'}")[0]
    result = run_association(session, ds)
    assert result.task == "visual_association" and (result.num_samples, result.bad_samples) == (4, 1)
    expected = _datacomp_scores(session.loaded, ds.dataset)
    assert result.metrics == pytest.approx(expected, abs=1e-9)
    assert 0 < result.metrics["avg_jaccard_score"] < 1  # neither all right nor all wrong: a mix-up would show


def test_datacomp_suite_finds_and_scores_winogavil(tiny_checkpoint, winogavil_root, tmp_path, eval_cli):
    results = tmp_path / "runs"
    code, out, err = eval_cli("eval", "--ckpt", tiny_checkpoint, "--suite", "datacomp", "--dataset-root",
                              winogavil_root, "--results-dir", results, "--no-cache")
    assert code == 0, err
    assert "not supported" not in err and "WinoGAViL:" not in err  # found, so not in the missing list
    (record,) = [json.loads(p.read_text()) for p in results.glob("*.json")]
    assert record["task"] == "visual_association" and record["dataset"].endswith("/winogavil")
    assert f"datacomp Retrieval: {record['metrics']['jaccard_score_10-12']:.4f} (partial: 1/3)" in out
