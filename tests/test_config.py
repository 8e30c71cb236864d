from pathlib import Path

import pytest
import yaml

from rift_sweep.config import ConfigError, SweepConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    config = load_config(path)
    assert isinstance(config, SweepConfig)
    assert Path(config.model.checkpoint).is_absolute()


def write(tmp_path, text_or_dict):
    path = tmp_path / "c.yaml"
    path.write_text(text_or_dict if isinstance(text_or_dict, str) else yaml.safe_dump(text_or_dict))
    return path


BASE = {"name": "t", "data": {"dataset": "digits"}, "model": {"name": "small_cnn", "checkpoint": "at.pt"}}


def with_(**sections):
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for key, value in sections.items():
        raw[key] = value
    return raw


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    config = load_config(write(tmp_path, BASE))
    assert config.model.checkpoint == str(tmp_path / "at.pt")
    assert config.search.space["lr"].log


@pytest.mark.parametrize("raw,field", [
    (with_(search={"sampler": "random-forest"}), "config.search.sampler"),
    (with_(search={"space": {}}), "space is empty"),
    (with_(search={"space": {"lr": {"low": 0.1, "high": 0.001, "log": True}}}), "low \\(0.1\\) must be < high"),
    (with_(search={"space": {"alpha": {"low": 0.0, "high": 1.5}}}), "alpha must lie within \\[0, 1\\]"),
    (with_(search={"space": {"momentum": {"low": 0.1, "high": 0.9}}}), "unknown parameter"),
    (with_(search={"num_samples": 0}), "num_samples must be >= 1"),
    (with_(alpha={"grid": [0.0, 1.2]}), "grid values must lie in \\[0, 1\\]"),
    (with_(attack={"eps": 0.0}), "config.attack.*eps"),
    (with_(attack={"eps": "big"}), "config.attack.eps must be float"),
    (with_(mrc={"epsilon": -0.1}), "config.mrc.*epsilon"),
    (with_(finetune={"bn": "train"}), "config.finetune.*bn"),
    (with_(modules={"choice": "named"}), "needs `name`"),
    (with_(data={"datset": "digits"}), "unknown field\\(s\\) \\['datset'\\]"),
    (with_(model={"checkpoint": "x.pt"}), "config.model: missing required field\\(s\\) \\['name'\\]"),
])
def test_bad_configs_name_the_field(tmp_path, raw, field):
    with pytest.raises(ConfigError, match=field):
        load_config(write(tmp_path, raw))


def test_unparseable_or_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a list"))


def test_yaml_tags_that_would_build_objects_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\n"))


def test_overrides_merge_into_sections(tmp_path):
    config = load_config(write(tmp_path, BASE), {"search": {"num_samples": 3}, "output_dir": str(tmp_path / "o")})
    assert config.search.num_samples == 3
    assert config.search.sampler == "tpe"
    assert config.output_path == tmp_path / "o"
