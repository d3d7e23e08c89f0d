"""The dense probe separates real patch features from noise: a trained checkpoint's tokens beat random tokens."""
import json

import torch

from maskclip_bench.evaluators.dense import evaluate_dense_probe


def test_trained_checkpoint_beats_random_features_on_the_dense_probe(tiny_checkpoint, tmp_path, one_thread):
    from maskclip_bench.cli import main

    results = tmp_path / "runs"
    try:
        main(["dense", "--ckpt", str(tiny_checkpoint), "--dataset", "shapes/dense:test=60,train=120",
              "--epochs", "5", "--results-dir", str(results), "--no-cache", "--threads", "1", "--quiet"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    (record,) = [json.loads(p.read_text()) for p in results.glob("*.json")]
    trained = record["metrics"]

    # Same probe, same labels, but patch tokens of pure noise: the chance level of this probe.
    from maskclip_bench.eval_data import build_eval_dataset

    ds = build_eval_dataset("shapes/dense:test=60,train=120", transform=lambda im: torch.zeros(1))
    segs = lambda d: torch.stack([d[i][1] for i in range(len(d))])  # noqa: E731
    train_segs, test_segs = segs(ds.splits["train"]), segs(ds.dataset)
    g = torch.Generator().manual_seed(0)
    noise = evaluate_dense_probe(
        torch.randn(120, 64, 192, generator=g), train_segs, torch.randn(60, 64, 192, generator=g), test_segs,
        num_classes=len(ds.classnames), grid_size=(8, 8), epochs=5,
    )
    assert trained["miou"] > noise["miou"] + 0.02, (trained, noise)
