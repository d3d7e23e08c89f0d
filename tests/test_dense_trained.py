"""The dense probe tells trained patch features from untrained ones: a trained checkpoint's tokens beat those of
the same ViT at its random initialisation (not just Gaussian noise), by a clear margin."""
import json

import torch

MODEL = "MaskCLIP-Micro-8"  # the model of conftest.py's shared tiny_checkpoint
SPEC = "shapes/dense:test=60,train=120"


def _dense(ckpt: str, results, *extra: str) -> dict:
    from maskclip_bench.cli import main

    try:
        main(["dense", "--ckpt", ckpt, *extra, "--dataset", SPEC, "--epochs", "5", "--results-dir", str(results),
              "--no-cache", "--threads", "1", "--quiet"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    (record,) = [json.loads(p.read_text()) for p in results.glob("*.json")]
    return record["metrics"]


def test_trained_checkpoint_beats_an_untrained_vit_on_the_dense_probe(tiny_checkpoint, tmp_path, one_thread):
    from maskclip_core.towers import create_clip

    trained = _dense(str(tiny_checkpoint), tmp_path / "trained")
    # The same architecture at random initialisation (seed 0, as the trainer's), as a plain open_clip checkpoint.
    torch.manual_seed(0)
    untrained_path = tmp_path / "untrained.pt"
    torch.save(create_clip(MODEL).state_dict(), untrained_path)
    untrained = _dense(str(untrained_path), tmp_path / "untrained", "--model", MODEL)
    # Measured (AMD EPYC, AVX2; the shared 80-step MaskCLIP-Micro-8 checkpoint): trained miou 0.0306 / pixel_acc
    # 0.237, untrained 0.0203 / 0.143. A random ViT's tokens keep local colour, so it is no pushover; the margins
    # asked here are about half of the measured ones.
    assert trained["pixel_acc"] > untrained["pixel_acc"] + 0.045, (trained, untrained)
    assert trained["miou"] > 1.25 * untrained["miou"], (trained, untrained)
