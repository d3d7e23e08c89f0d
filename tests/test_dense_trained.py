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

    spec, blank = "shapes/dense:test=60,train=120", (lambda im: torch.zeros(1))
    test_ds = build_eval_dataset(spec, transform=blank)
    train_ds = build_eval_dataset(spec, transform=blank, split="train")
    segs = lambda d: torch.stack([d[i][1] for i in range(len(d))])  # noqa: E731
    train_segs, test_segs = segs(train_ds.dataset), segs(test_ds.dataset)
    g = torch.Generator().manual_seed(0)
    noise = evaluate_dense_probe(
        torch.randn(120, 64, 192, generator=g), train_segs, torch.randn(60, 64, 192, generator=g), test_segs,
        num_classes=len(test_ds.classnames), grid_size=(8, 8), epochs=5,
    )
    # Measured: trained miou 0.041 / pixel_acc 0.41 against noise 0.024 / 0.21 (a 30-step checkpoint).
    assert trained["miou"] > noise["miou"], (trained, noise)
    assert trained["pixel_acc"] > noise["pixel_acc"] + 0.1, (trained, noise)
