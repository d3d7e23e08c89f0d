"""`maskclip-bench train` from the command line: outputs, and one clear line for every bad input."""
import json

import pytest
from cli_runner import invoke_cli, main_exit


def test_train_writes_config_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    r = invoke_cli(["train", "--method", "clip", "--model", "MaskCLIP-Micro-8", "--steps", "4", "--batch-size", "8",
                    "--out", str(out), "--set", "log_every=2", "--set", "workers=0", "--quiet"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"]["name"] == "clip" and cfg["run"]["steps"] == 4 and cfg["data"]["workers"] == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]
    for key in ("step", "loss", "loss_contrastive", "loss_distill", "loss_mlm", "lr", "logit_scale",
                "samples_per_s"):
        assert key in lines[0]
    assert (out / "checkpoints" / "last.pt").is_file()


def write_csv(tmp_path, header="filepath,title"):
    from PIL import Image

    Image.new("RGB", (16, 16), "red").save(tmp_path / "a.png")
    p = tmp_path / "pairs.csv"
    p.write_text(f"{header}\na.png,a red square\n")
    return p


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "simclr"], "method must be one of clip, maskclip"),
        (["--model", "ViT-Nope-1"], "unknown model 'ViT-Nope-1'"),
        (["--mask-ratio", "1.2"], "mask_ratio must be in (0, 1)"),
        (["--mask-ratio", "0"], "mask_ratio must be in (0, 1)"),
        (["--data", "csv:/no/such/file.csv"], "csv file not found: /no/such/file.csv"),
        (["--data", "parquet:/x"], "unknown data spec"),
        (["--data", "wds:/no/such/shard-{0..3}.tar"], "no shards match"),
        (["--set", "mask_ration=0.5"], "did you mean 'mask_ratio'"),
        (["--config", "/no/such.yaml"], "config file not found"),
    ],
)
def test_bad_input_gets_one_clear_line(tmp_path, capsys, args, message):
    # In this process (main() as the console script calls it): a subprocess per case costs an import of torch and
    # open_clip (~7 s on a 2-core CPU). The real console script's one-line errors are covered once, in
    # test_eval_cli.py (a corrupt checkpoint) and test_reliability.py (no readable checkpoint to resume).
    code, err = main_exit(capsys, "train", "--out", str(tmp_path / "x"), "--steps", "1", *args)
    err = err.strip()
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err


def test_csv_without_named_columns(tmp_path, capsys):
    p = write_csv(tmp_path, header="path,caption")
    code, err = main_exit(capsys, "train", "--data", f"csv:{p}", "--out", str(tmp_path / "x"), "--steps", "1")
    assert code == 2, err
    assert "no column" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
