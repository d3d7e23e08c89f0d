"""Our numbers agree with the real `clip_benchmark eval` command on the same checkpoint and images.

The shared tiny checkpoint is exported as an open_clip local-dir model (`maskclip-bench export`), the
shapes test split is exported in CLIP_benchmark's webdataset layout (`maskclip-bench data export`), and
the `clip_benchmark` console script scores both in subprocesses:

    clip_benchmark eval --model local-dir:MODEL_DIR --pretrained '' --dataset wds/NAME --dataset_root DATA_DIR
        --task zeroshot_classification|zeroshot_retrieval --no_amp --recall_k 1 5 10 --batch_size 100
        --num_workers 0 --output result.json

(clip_benchmark has no --device flag: it takes CUDA when torch sees it, so CUDA_VISIBLE_DEVICES is
emptied.) Our side runs `maskclip-bench zeroshot/retrieval` on the trainer checkpoint with the
built-in shapes spec and on the wds export; every metric must agree within 0.1 points.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

N = 300  # test samples: a few hundred, as CLIP_benchmark would score them
CLS_SPEC, RET_SPEC = f"shapes/shape_color:test={N}", f"shapes/retrieval:test={N}"
TOLERANCE = 0.001  # 0.1 points, metrics being fractions


def _cli(*args: object) -> None:
    from maskclip_bench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code in (0, None)


def _clip_benchmark(model_dir: Path, data_dir: Path, name: str, task: str, output: Path) -> subprocess.Popen:
    script = Path(sys.executable).with_name("clip_benchmark")
    cmd = [str(script), "eval", "--model", f"local-dir:{model_dir}", "--pretrained", "",
           "--dataset", f"wds/{name}", "--dataset_root", str(data_dir), "--task", task, "--no_amp",
           "--recall_k", "1", "5", "10", "--batch_size", "100", "--num_workers", "0", "--seed", "0",
           "--output", str(output), "--quiet"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "TQDM_DISABLE": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.fixture(scope="module")
def agreement(tiny_checkpoint, tmp_path_factory):
    """Export model and data, start both clip_benchmark runs, score ours meanwhile, collect everything."""
    root = tmp_path_factory.mktemp("agreement")
    model_dir, cls_dir, ret_dir = root / "model", root / "wds_cls", root / "wds_ret"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from maskclip_bench.evaluation.model_loading import load_model

        # Rendered at the model's input size, as our built-in spec renders them: a resize in between changes pixels.
        size = load_model(str(tiny_checkpoint)).image_size
        _cli("export", "--ckpt", tiny_checkpoint, "--out", model_dir)
        for spec, out in ((CLS_SPEC, cls_dir), (RET_SPEC, ret_dir)):
            _cli("data", "export", "--dataset", spec, "--format", "wds", "--out", out, "--samples-per-shard", 128,
                 "--image-size", size)
        procs = {
            "cls": (_clip_benchmark(model_dir, cls_dir, "shapes_shape_color", "zeroshot_classification",
                                    root / "cb_cls.json"), root / "cb_cls.json"),
            "ret": (_clip_benchmark(model_dir, ret_dir, "shapes_retrieval", "zeroshot_retrieval",
                                    root / "cb_ret.json"), root / "cb_ret.json"),
        }
        ours: dict[str, dict] = {}
        common = ["--ckpt", tiny_checkpoint, "--no-cache", "--threads", 1, "--batch-size", 100, "--quiet"]
        runs = (("cls", "zeroshot", CLS_SPEC), ("ret", "retrieval", RET_SPEC),
                ("cls_wds", "zeroshot", f"wds:{cls_dir}"), ("ret_wds", "retrieval", f"wds:{ret_dir}"))
        for key, command, spec in runs:
            out = root / f"ours_{key}"
            _cli(command, "--dataset", spec, "--results-dir", out, *common)
            (record_file,) = out.glob("*.json")
            ours[key] = json.loads(record_file.read_text())
        theirs = {}
        for key, (proc, output) in procs.items():
            log, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"clip_benchmark eval failed:\n{log[-3000:]}"
            theirs[key] = json.loads(output.read_text())
    finally:
        torch.set_num_threads(threads)
    return {"ours": ours, "theirs": theirs, "model_dir": model_dir}


def test_zeroshot_classification_agrees(agreement):
    theirs = agreement["theirs"]["cls"]
    assert theirs["task"] == "zeroshot_classification" and theirs["pretrained"] == ""
    for key in ("cls", "cls_wds"):
        ours = agreement["ours"][key]
        assert ours["num_samples"] == N
        for metric in ("acc1", "acc5", "mean_per_class_recall"):
            assert ours["metrics"][metric] == pytest.approx(theirs["metrics"][metric], abs=TOLERANCE), (key, metric)


def test_zeroshot_retrieval_agrees(agreement):
    theirs = agreement["theirs"]["ret"]
    assert theirs["task"] == "zeroshot_retrieval"
    assert {"image_retrieval_recall@5", "text_retrieval_recall@5"} <= set(theirs["metrics"])
    for key in ("ret", "ret_wds"):
        ours = agreement["ours"][key]
        assert ours["num_samples"] == N
        for metric, value in theirs["metrics"].items():
            assert ours["metrics"][metric] == pytest.approx(value, abs=TOLERANCE), (key, metric)


def test_exported_model_features_equal_ours(agreement, tiny_checkpoint):
    import open_clip

    from maskclip_bench.eval_data import build_eval_dataset
    from maskclip_bench.evaluation.model_loading import load_model

    ours = load_model(str(tiny_checkpoint))
    name = f"local-dir:{agreement['model_dir']}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)  # what clip_benchmark calls
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    ds = build_eval_dataset(RET_SPEC.replace(str(N), "16"), transform=None, image_size=64)
    pil = [ds.dataset[i][0] for i in range(16)]
    captions = [ds.dataset[i][1][0] for i in range(16)]
    images_theirs = torch.stack([preprocess(im) for im in pil])
    images_ours = torch.stack([ours.preprocess(im) for im in pil])
    assert torch.equal(images_theirs, images_ours)  # the same eval transform
    with torch.no_grad():
        img_a, img_b = ours.model.encode_image(images_ours), model.encode_image(images_theirs)
        txt_a, txt_b = ours.model.encode_text(ours.tokenizer(captions)), model.encode_text(tokenizer(captions))
    assert (img_a - img_b).abs().max().item() < 1e-5
    assert (txt_a - txt_b).abs().max().item() < 1e-5
    assert ours.model.logit_scale.item() == pytest.approx(model.logit_scale.item(), abs=1e-6)
