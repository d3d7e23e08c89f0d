"""The config object: YAML/JSON loading, --set overrides, validation messages."""
import pytest

from maskclip_core.config import TrainConfig, apply_overrides, load_config, validate
from maskclip_core.errors import ConfigError


def test_yaml_and_json_files_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("method:\n  name: clip\n  mask_ratio: 0.5\nrun:\n  steps: 7\n")
    cfg = load_config(y)
    assert cfg.method.name == "clip" and cfg.method.mask_ratio == 0.5 and cfg.run.steps == 7
    j = tmp_path / "c.json"
    TrainConfig().save(j)
    assert load_config(j) == TrainConfig()
    apply_overrides(cfg, ["w_mlm=0", "method.decoder_depth=4", "mlm_causal=false", "spec=csv:/x.csv"])
    assert cfg.method.w_mlm == 0.0 and cfg.method.decoder_depth == 4 and cfg.method.mlm_causal is False
    assert cfg.data.spec == "csv:/x.csv"


@pytest.mark.parametrize(
    "override, message",
    [
        ("mask_ration=0.5", "did you mean 'mask_ratio'"),
        ("decoder_depth=1.5", "expects int"),
        ("mask_ratio=abc", "expects float"),
        ("mlm_causal=maybe", "expects bool"),
        ("novalue", "key=value"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(TrainConfig(), [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("mask_ratio=1.0", "mask_ratio must be in"),
        ("mask_ratio=0", "mask_ratio must be in"),
        ("method.name=mae", "method must be one of"),
        ("distill_target=logits", "distill_target must be one of"),
        ("batch_size=1", "batch_size"),
        ("contrastive_view=half", "contrastive_view"),
    ],
)
def test_validation(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(apply_overrides(TrainConfig(), [override]))


def test_unknown_key_in_file(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("method:\n  decoder_dept: 3\n")
    with pytest.raises(ConfigError, match="decoder_depth"):
        load_config(y)
