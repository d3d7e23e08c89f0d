"""`maskclip-bench demo` end to end on a budget of a few steps and small evaluation sets."""
from __future__ import annotations

import json

import pytest


def test_demo_smoke(tmp_path, capsys, monkeypatch, one_thread):
    from maskclip_bench.cli import main

    monkeypatch.setenv("COLUMNS", "200")  # rich wraps the table's rows at 80 columns otherwise

    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--steps", "2", "--batch-size", "8", "--model", "MaskCLIP-Micro-8", "--precision", "fp32",
              "--out", str(out),
              "--shapes", "test=40,train=40,val=20"])
    printed = capsys.readouterr().out
    assert exit_info.value.code in (0, None), printed
    for method in ("clip", "maskclip"):
        rows = (out / method / "metrics.jsonl").read_text().splitlines()
        assert json.loads(rows[-1])["step"] == 2
        assert (out / method / "checkpoints" / "last.pt").is_file()
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    # the quick suite: zero-shot, retrieval and linear probe, for both methods, on the small sets asked for
    assert sorted((r["task"], r["train_config"]["method"]["name"]) for r in records) == sorted(
        (task, method) for task in ("zeroshot_classification", "zeroshot_retrieval", "linear_probe")
        for method in ("clip", "maskclip"))
    assert all(r["num_samples"] == 40 for r in records)
    # the side-by-side table: a row per metric of both methods, with the difference
    assert "clip vs maskclip on shapes (MaskCLIP-Micro-8, 2 steps, batch 8, seed 0)" in printed
    assert "shape_color acc1" in printed and "retrieval image_retrieval_recall@5" in printed
    assert "lp_acc1" in printed and "total time" in printed and "2 s.e." in printed
    # Whether the methods differ, recomputed from the records: |gap| > 2 * sqrt(p1 (1 - p1) / n + p2 (1 - p2) / n).
    by = {(r["task"], r["train_config"]["method"]["name"]): r for r in records}
    differ = []
    for task in ("zeroshot_classification", "zeroshot_retrieval", "linear_probe"):
        a, b = by[(task, "clip")], by[(task, "maskclip")]
        for metric, p1 in a["metrics"].items():
            if "mean_per_class" in metric or not isinstance(p1, (int, float)) or metric.endswith("_C"):
                continue
            p2, n = b["metrics"][metric], a["num_samples"]
            if abs(p2 - p1) > 2 * (p1 * (1 - p1) / n + p2 * (1 - p2) / n) ** 0.5:
                differ.append(metric)
    flat = " ".join(printed.split())
    if differ:
        assert "differ by more than 2 standard errors" in flat and all(m in flat for m in differ)
    else:
        assert "do not differ by more than 2 standard errors on any metric" in flat
