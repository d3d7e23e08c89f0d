"""Hostile input (issue 19): one test per row of the issue's table, plus the YAML alias guard.

Each test feeds the input a hostile user (or a pull request) would, and checks that it is refused with one line or
skipped and counted, and that no command ran: every would-be command touches a marker file, which must not appear.
Nothing here opens a network connection or runs a shell.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import zlib
from pathlib import Path

import pytest
import torch
from cli_runner import main_exit

from maskclip_core.errors import CheckpointError, ConfigError, DataError


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    """Run the CLI in this process; (exit code, stderr lines)."""
    code, err = main_exit(capsys, *args)
    return code, err.strip().splitlines()


def _pipe_spec(marker: Path) -> str:
    return f"wds:pipe:touch {marker}; cat good.tar"


@pytest.fixture
def no_shell_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test with nothing trusted (a CLI call earlier in the process may have trusted a spec)."""
    from maskclip_core.data.shell_specs import TRUST_ENV

    monkeypatch.delenv(TRUST_ENV, raising=False)


# Row: `data.spec: "wds:pipe:<command>; cat good.tar"` in a --config YAML ------------------------------------

def test_pipe_spec_from_a_config_file_is_refused_without_opt_in(tmp_path, capsys, no_shell_trust):
    marker = tmp_path / "ran"
    config = tmp_path / "cfg.yaml"
    config.write_text(f'data:\n  spec: "{_pipe_spec(marker)}"\n')
    code, err = _cli(capsys, "train", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2 and len(err) == 1 and "pipe:" in err[0] and "--allow-pipe" in err[0], err
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_pipe_spec_is_trusted_from_the_command_line_or_with_allow_pipe_only(tmp_path, no_shell_trust):
    """The gate itself, without running anything: which origins make expand_shards accept a pipe: shard."""
    from maskclip_bench.commands.run_config import build_config, trust_typed_data_spec
    from maskclip_core.data.wds_dataset import expand_shards

    spec = _pipe_spec(tmp_path / "ran")
    pattern = spec.removeprefix("wds:")
    config = tmp_path / "cfg.yaml"
    config.write_text(f'data:\n  spec: "{spec}"\n')

    trust_typed_data_spec(build_config(config, [], {}), {}, [], allow_pipe=False)  # from the file: untrusted
    with pytest.raises(DataError, match="pipe:"):
        expand_shards(pattern)
    trust_typed_data_spec(build_config(config, [], {}), {}, [], allow_pipe=True)  # the user opted in
    assert expand_shards(pattern) == [pattern]
    for flags, overrides in (({"data.spec": spec}, []), ({}, [f"spec={spec}"])):  # typed: --data, --set
        os.environ.pop("MASKCLIP_TRUSTED_SHELL_DATA")
        trust_typed_data_spec(build_config(config, overrides, flags), flags, overrides, allow_pipe=False)
        assert expand_shards(pattern) == [pattern]
    assert not (tmp_path / "ran").exists()


# Row: the same pipe: spec in `settings.data` of a `check --baseline` JSON ------------------------------------

def test_pipe_spec_in_a_baseline_file_is_refused(tmp_path, capsys, no_shell_trust):
    from maskclip_bench.experiments.regression import BASELINE_FORMAT

    marker = tmp_path / "ran"
    baseline = tmp_path / "ci.json"
    baseline.write_text(json.dumps({"format": BASELINE_FORMAT, "metrics": {},
                                    "settings": {"data": _pipe_spec(marker), "steps": 1}}))
    code, err = _cli(capsys, "check", "--baseline", str(baseline))
    assert code == 2 and len(err) == 1 and "'data'" in err[0] and "pipe:" in err[0], err
    assert not marker.exists()


def test_baseline_naming_a_hub_model_is_refused(tmp_path, capsys):
    from maskclip_bench.experiments.regression import BASELINE_FORMAT

    baseline = tmp_path / "ci.json"
    baseline.write_text(json.dumps({"format": BASELINE_FORMAT, "metrics": {},
                                    "settings": {"model": "hf-hub:someone/some-model"}}))
    code, err = _cli(capsys, "check", "--baseline", str(baseline))
    assert code == 2 and len(err) == 1 and "'model'" in err[0] and "download" in err[0], err


def test_baseline_settings_of_the_wrong_type_are_one_line(tmp_path, capsys):
    from maskclip_bench.experiments.regression import BASELINE_FORMAT

    baseline = tmp_path / "ci.json"
    baseline.write_text(json.dumps({"format": BASELINE_FORMAT, "metrics": {}, "settings": {"steps": "many"}}))
    code, err = _cli(capsys, "check", "--baseline", str(baseline))
    assert code == 2 and len(err) == 1 and "'steps'" in err[0], err


# Row: `clip_benchmark:flickr8k@<root>` whose root contains `;touch X;#` ------------------------------------------

def test_clip_benchmark_root_with_shell_metacharacters_is_refused(tmp_path, monkeypatch):
    from maskclip_bench.eval_data import build_eval_dataset

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data;touch ran;#"
    root.mkdir()
    with pytest.raises(DataError, match="shell metacharacters"):
        build_eval_dataset(f"clip_benchmark:flickr8k@{root}", transform=None)
    assert not (tmp_path / "ran").exists() and not (root / "ran").exists()


def test_clip_benchmark_builder_that_would_download_names_the_missing_file(tmp_path, monkeypatch):
    import subprocess

    from maskclip_bench.eval_data import build_eval_dataset

    def no_commands(*args, **kwargs):
        raise AssertionError(f"a command was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_commands)
    monkeypatch.setattr(os, "system", no_commands)
    with pytest.raises(DataError) as info:
        build_eval_dataset(f"clip_benchmark:flickr8k@{tmp_path}", transform=None)
    assert "missing" in str(info.value) and "flickr8k" in str(info.value)


# Row: a checkpoint whose saved config names model `hf-hub:<org>/<model>` ----------------------------------------

def _tiny_state(**config: object) -> dict:
    from maskclip_core.config import TrainConfig
    from maskclip_core.towers import create_clip

    cfg = TrainConfig().to_dict()
    cfg["model"].update(config)
    return {"step": 1, "config": cfg, "clip": create_clip("MaskCLIP-Tiny-8").state_dict()}


def test_saved_hf_hub_model_name_is_refused_without_network(tmp_path, monkeypatch):
    import socket

    from maskclip_bench.evaluation.model_loading import load_model
    from maskclip_core.checkpoint import save_checkpoint

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    path = tmp_path / "hub.pt"
    save_checkpoint(_tiny_state(name="hf-hub:someone/some-model"), path)
    with pytest.raises(CheckpointError, match="hf-hub:someone/some-model.*refused"):
        load_model(str(path))


def test_resume_from_a_run_folder_naming_a_hub_model_is_refused(tmp_path, capsys):
    from maskclip_core.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.name = "hf-hub:someone/some-model"
    cfg.save(tmp_path / "config.json")
    code, err = _cli(capsys, "train", "--resume", "--out", str(tmp_path), "--quiet")
    assert code == 2 and len(err) == 1 and "hf-hub:someone/some-model" in err[0] and "refused" in err[0], err


# Row: a `local-dir:` folder with a config and no weights -------------------------------------------------------

def test_local_dir_without_weights_is_an_error_not_a_random_model(tmp_path):
    from maskclip_bench.evaluation.model_loading import CONFIG_NAME, load_model

    (tmp_path / CONFIG_NAME).write_text(json.dumps({"model_cfg": {"embed_dim": 32}}))
    with pytest.raises(CheckpointError, match="no weight file"):
        load_model(f"local-dir:{tmp_path}")


# Row: images of an imagefolder overwritten in place, then evaluated again ---------------------------------------

def test_feature_cache_key_sees_a_file_rewritten_three_levels_deep(tmp_path):
    from maskclip_bench.evaluation.feature_cache import files_fingerprint

    image = tmp_path / "test" / "cat" / "0.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"old image")
    before = files_fingerprint(tmp_path)
    image.write_bytes(b"new image, other size")
    assert files_fingerprint(tmp_path) != before
    # Same size, only the mtime moves: still a different key.
    middle = files_fingerprint(tmp_path)
    image.write_bytes(b"NEW IMAGE, OTHER SIZE")
    os.utime(image, ns=(1, 1))
    assert files_fingerprint(tmp_path) != middle


# Row: a cache entry's features replaced (format and key kept) ---------------------------------------------------

def test_altered_cache_entry_is_recomputed_with_one_warning(tmp_path):
    from maskclip_bench.evaluation.feature_cache import FeatureCache

    cache = FeatureCache(tmp_path)
    key, kinds = "cd" + "1" * 62, ["image_features"]
    good = {"image_features": torch.ones(3, 4), "targets": torch.tensor([0, 1, 2])}
    path = cache.put(key, kinds, good, {})
    entry = torch.load(path, weights_only=True)
    entry["features"]["image_features"] = torch.zeros(3, 4)  # format, key and checksum field kept
    torch.save(entry, path)
    with pytest.warns(UserWarning, match="checksum") as caught:
        features, hit = cache.get_or_compute(key, kinds, lambda: good)
    assert not hit and torch.equal(features["image_features"], torch.ones(3, 4)) and len(caught) == 1


def test_cache_entry_of_the_wrong_shape_is_recomputed(tmp_path):
    from maskclip_bench.evaluation.feature_cache import FeatureCache, features_checksum

    cache = FeatureCache(tmp_path)
    key, kinds = "ef" + "2" * 62, ["image_features"]
    path = cache.put(key, kinds, {"image_features": torch.ones(3, 4)}, {})
    entry = torch.load(path, weights_only=True)
    bad = {"image_features": torch.ones(12), "targets": torch.tensor([0, 1])}
    entry["features"], entry["checksum"] = bad, features_checksum(bad)  # consistent checksum, wrong shape
    torch.save(entry, path)
    with pytest.warns(UserWarning, match="not a \\[N, D\\] float tensor"):
        assert cache.get(key, kinds) is None


# Rows: `--set weight_decay=.nan` (and grad_clip, epochs, threads, shuffle_buffer); `beta1=2`, `eps=-1`,
# `decoder_heads=7` -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, field", [
    ("weight_decay=.nan", "optim.weight_decay"), ("grad_clip=.nan", "optim.grad_clip"), ("epochs=.nan", "run.epochs"),
    ("lr=.inf", "optim.lr"), ("max_bad_fraction=.nan", "run.max_bad_fraction"), ("threads=-5", "run.threads"),
    ("shuffle_buffer=-1", "data.shuffle_buffer"), ("beta1=2", "optim.beta1"), ("beta2=1", "optim.beta2"),
    ("eps=-1", "optim.eps"), ("eps=0", "optim.eps"), ("seed=-1", "run.seed"),
    ("decoder_heads=7", "method.decoder_heads"),
])
def test_bad_config_values_are_one_line_naming_the_field(override, field):
    from maskclip_bench.commands.run_config import build_config, check_model_and_data

    with pytest.raises(ConfigError) as info:
        check_model_and_data(build_config(None, [override], {}))
    assert field in str(info.value) and "\n" not in str(info.value)


def test_every_float_field_is_checked_for_finiteness_even_unlisted_ones():
    """The check walks the dataclasses: each float field in turn set to NaN must be refused by name."""
    from dataclasses import fields

    from maskclip_core.config import TrainConfig, validate

    cfg = TrainConfig()
    floats = [(s.name, f.name) for s in fields(cfg) for f in fields(getattr(cfg, s.name))
              if isinstance(getattr(getattr(cfg, s.name), f.name), float)]
    assert len(floats) >= 15
    for section, name in floats:
        cfg = TrainConfig()
        setattr(getattr(cfg, section), name, float("nan"))
        with pytest.raises(ConfigError, match=f"{section}.{name} must be a finite number"):
            validate(cfg)


def test_nan_weight_decay_exits_2_on_the_command_line(tmp_path, capsys):
    code, err = _cli(capsys, "train", "--set", "weight_decay=.nan", "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2 and len(err) == 1 and "optim.weight_decay must be a finite number" in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, message", [
    ("a: &a [*a]\n", "recursive YAML alias"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n", "more than 10000 YAML nodes"),
])
def test_yaml_alias_bombs_are_refused(tmp_path, text, message):
    from maskclip_core.config import load_config

    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_ordinary_yaml_with_an_alias_still_loads(tmp_path):
    from maskclip_core.config import load_config

    path = tmp_path / "ok.yaml"
    path.write_text("base: &steps 7\nrun:\n  steps: *steps\n")
    with pytest.raises(ConfigError, match="unknown config key 'base'"):  # aliases resolve; the key is checked
        load_config(path)
    path.write_text("run: &run {steps: 7}\n")
    assert load_config(path).run.steps == 7


# Row: CSV row `link/../secret.png`, `link` pointing outside the CSV's folder; same for flickr30k annotations --

def _link_out(tmp_path: Path) -> tuple[Path, Path]:
    """A dataset folder with `link` -> outside/deep, and outside/secret.png next to deep's parent."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    data.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    os.symlink(outside / "deep", data / "link")
    return data, outside


def test_csv_path_through_a_symlink_and_dotdot_is_outside_the_root(tmp_path):
    from maskclip_core.data.csv_dataset import CsvDataset

    data, outside = _link_out(tmp_path)
    (data / "train.csv").write_text("filepath,title\nlink/../secret.png,a secret\n")
    with pytest.raises(DataError, match=f"resolves to {outside / 'secret.png'}, outside"):
        CsvDataset(data / "train.csv")


def test_annotation_path_through_a_symlink_and_dotdot_is_outside_the_root(tmp_path):
    from maskclip_bench.eval_data.common import check_inside_root

    data, _ = _link_out(tmp_path)
    with pytest.raises(DataError, match="points outside the dataset root"):
        check_inside_root(["link/../secret.png"], data, "flickr30k annotation file")
    check_inside_root(["link/inside.png", "img/../img/a.png"], data, "annotations")  # the owner's link is fine


# Row: a FIFO named as an image ---------------------------------------------------------------------------------

def test_fifo_named_as_an_image_is_a_bad_sample_not_a_hang(tmp_path):
    from maskclip_core.data.csv_dataset import CsvDataset
    from maskclip_core.data.images import BadImageError, open_rgb

    fifo = tmp_path / "0.png"
    os.mkfifo(fifo)
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("open_rgb hung on a FIFO")))
    signal.alarm(5)
    try:
        with pytest.raises(BadImageError, match="not a regular file \\(a FIFO\\)"):
            open_rgb(fifo)
        from PIL import Image

        Image.new("RGB", (4, 4)).save(tmp_path / "1.png")
        (tmp_path / "train.csv").write_text("filepath,title\n0.png,a fifo\n1.png,a picture\n")
        sample = CsvDataset(tmp_path / "train.csv")[0]  # the FIFO row is skipped and counted
    finally:
        signal.alarm(0)
    assert sample["bad"] == 1 and sample["text"] == "a picture"


# Rows: resume from a checkpoint with a missing or wrongly typed field; `clip` stored as a list ---------------------

def _resume_state() -> dict:
    import random

    state = _tiny_state()
    state.update(epoch=0, batch_in_epoch=1, extras={}, optimizer={"state": {}, "param_groups": []},
                 rng={"torch": torch.get_rng_state(), "python": random.getstate()}, teacher=None,
                 data={"samples": 8, "bad": 0})
    return state


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", None, "no field 'optimizer'"), ("step", "7", "field 'step' has the wrong type"),
    ("epoch", -1, "field 'epoch' is negative"), ("rng", {"torch": 1}, "field 'rng' lacks"),
    ("data", {"samples": "x"}, "field 'data'"),
])
def test_resume_checkpoint_with_a_bad_field_is_one_line(tmp_path, field, value, message):
    from maskclip_core.checkpoint import CheckpointDir, save_checkpoint

    state = _resume_state()
    if value is None:
        del state[field]
    else:
        state[field] = value
    save_checkpoint(state, tmp_path / "step_00000001.pt")
    with pytest.raises(CheckpointError, match=message):
        CheckpointDir(tmp_path).load_latest()


def test_a_good_resume_state_passes_the_check(tmp_path):
    from maskclip_core.checkpoint import CheckpointDir, save_checkpoint

    save_checkpoint(_resume_state(), tmp_path / "step_00000001.pt")
    state, _ = CheckpointDir(tmp_path).load_latest()
    assert state["step"] == 1


def test_clip_stored_as_a_list_is_one_line(tmp_path):
    from maskclip_bench.evaluation.model_loading import load_model
    from maskclip_core.checkpoint import save_checkpoint

    state = _tiny_state()
    state["clip"] = [1, 2, 3]
    save_checkpoint(state, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="field 'clip' must be a dict of tensors"):
        load_model(str(tmp_path / "list.pt"))


# Row: a record whose timestamp is an int --------------------------------------------------------------------------

def test_record_with_an_int_timestamp_is_skipped_with_a_warning(tmp_path):
    from maskclip_bench.evaluation.records import load_records

    good = {"task": "zeroshot", "dataset": "d", "metrics": {"acc1": 0.5}, "checkpoint_hash": "h",
            "timestamp": "2026-01-01T00:00:00Z"}
    (tmp_path / "a.json").write_text(json.dumps(good))
    (tmp_path / "b.json").write_text(json.dumps({**good, "timestamp": 5}))
    with pytest.warns(UserWarning, match="'timestamp' is not a string"):
        frame = load_records(tmp_path)
    assert len(frame) == 1


# Row: a flipped bit against its SHA-256 sidecar, on `export`; a plain state dict with a mismatching sidecar ---------

def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def test_flipped_bit_is_named_as_a_sidecar_mismatch_on_export(tmp_path, capsys):
    from maskclip_core.checkpoint import save_checkpoint

    path = tmp_path / "run.pt"
    save_checkpoint(_tiny_state(), path)
    _flip_a_bit(path)
    code, err = _cli(capsys, "export", "--ckpt", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and len(err) == 1 and "does not match run.pt.sha256" in err[0], err


def test_plain_state_dict_with_a_mismatching_sidecar_is_refused(tmp_path):
    from maskclip_bench.evaluation.model_loading import load_model
    from maskclip_core.towers import create_clip

    path = tmp_path / "plain.pt"
    torch.save(create_clip("MaskCLIP-Tiny-8").state_dict(), path)
    (tmp_path / "plain.pt.sha256").write_text("0" * 64 + "  plain.pt\n")
    with pytest.raises(CheckpointError, match="does not match plain.pt.sha256"):
        load_model(str(path), "MaskCLIP-Tiny-8")


# Row: report's table path, a run's config.json, data export's split folder as symlinks --------------------------

def test_report_tables_replace_a_symlink_instead_of_writing_through_it(tmp_path):
    from maskclip_bench.results.report import write_report

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "tables"
    out.mkdir()
    os.symlink(victim, out / "benchmark.md")
    write_report(tmp_path / "no_records", out)
    assert victim.read_text() == "keep me"
    assert not (out / "benchmark.md").is_symlink() and "# Benchmark" in (out / "benchmark.md").read_text()


def test_run_config_json_replaces_a_symlink(tmp_path):
    from maskclip_core.config import TrainConfig

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, tmp_path / "config.json")
    TrainConfig().save(tmp_path / "config.json")
    assert victim.read_text() == "keep me" and json.loads((tmp_path / "config.json").read_text())["run"]


def test_data_export_refuses_a_symlinked_split_folder(tmp_path):
    from maskclip_bench.export.data import export_dataset

    victim = tmp_path / "victim"
    victim.mkdir()
    out = tmp_path / "export"
    out.mkdir()
    os.symlink(victim, out / "test")
    with pytest.raises(DataError, match="is a symlink"):
        export_dataset("shapes/shape_color:test=4", "test", "imagefolder", out, image_size=32)
    assert list(victim.iterdir()) == []


# Row: eval wds labels -1 / 9999; nshards.txt of 10^11; a 12000x12000 image ----------------------------------------

def _tar_with(path: Path, members: dict[str, bytes]) -> None:
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png(width: int = 4, height: int = 4) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_eval_wds_labels_outside_the_class_list_are_bad_samples(tmp_path):
    from maskclip_bench.eval_data.wds_benchmark import build_wds

    (tmp_path / "classnames.txt").write_text("cat\ndog\n")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "nshards.txt").write_text("1\n")
    _tar_with(tmp_path / "test" / "0.tar", {"a.png": _png(), "a.cls": b"1", "b.png": _png(), "b.cls": b"-1",
                                            "c.png": _png(), "c.cls": b"9999", "d.png": _png(), "d.cls": b"0"})
    ds = build_wds(tmp_path, transform=None)
    assert ds.num_samples == 2 and ds.bad_samples == 2
    assert sorted(int(ds.dataset[i][1]) for i in range(2)) == [0, 1]


def test_absurd_shard_count_is_one_line(tmp_path):
    from maskclip_bench.eval_data.wds_benchmark import shard_paths

    (tmp_path / "nshards.txt").write_text(str(10**11))
    with pytest.raises(DataError, match="says 100000000000 shards"):
        shard_paths(tmp_path)


def test_absurd_training_shard_range_is_one_line_before_expanding():
    from maskclip_core.data.wds_dataset import expand_shards

    with pytest.raises(DataError, match="names 100000000000 shards"):
        expand_shards("/data/{0..99999999999}.tar")


def test_baseline_nested_too_deeply_is_one_line(tmp_path, capsys):
    baseline = tmp_path / "ci.json"
    baseline.write_text("[" * 100_000 + "]" * 100_000)
    code, err = _cli(capsys, "check", "--baseline", str(baseline))
    assert code == 2 and len(err) == 1 and "not valid JSON" in err[0], err


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but holds no pixel data (PIL reads the size from IHDR)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_huge_image_is_a_bad_sample_before_it_is_decoded(tmp_path):
    from maskclip_core.data.images import MAX_PIXELS, BadImageError, open_rgb

    assert 7000 * 7000 > MAX_PIXELS and 12000 * 12000 > 2 * MAX_PIXELS
    # Above the limit: refused from the header, before 150 MB of pixels are decoded.
    with pytest.raises(BadImageError, match="7000x7000 pixels, more than the limit"):
        open_rgb(_png_header_only(7000, 7000))
    # Above twice the limit PIL's own bomb check (set to the same limit) refuses it first.
    with pytest.raises(BadImageError, match="DecompressionBombError: Image size \\(144000000 pixels\\)"):
        open_rgb(_png_header_only(12000, 12000))
