import dataclasses
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


@pytest.mark.parametrize(
    "raw,field",
    [
        (with_(search={"sampler": "random-forest"}), "search.sampler must be one of \\['tpe', 'gp', 'nsga2'\\]"),
        (with_(search={"space": {}}, alpha={"searched": False}), "nothing to search"),
        (with_(search={"space": {"lr": {"low": 0.1, "high": 0.001, "log": True}}}), "low \\(0.1\\) must be < high"),
        (with_(search={"space": {"alpha": {"low": 0.0, "high": 1.0, "step": 0.2}}}), "search.space.alpha is gone"),
        (with_(search={"space": {"alpha": {"low": 0.0, "high": 1.0, "step": 0.3}}}), "search.space.alpha is gone"),
        (with_(search={"space": {"epochs": {"low": 1, "high": 9, "step": 3}}}), "whole number of steps"),
        (with_(search={"space": {"lr": {"low": 0.001, "high": 0.1, "log": True, "step": 0.001}}}), "no log lattice"),
        (with_(search={"space": {"epochs": {"low": 1, "high": 9, "step": 0.5}}}), "epochs needs whole numbers"),
        (with_(search={"space": {"momentum": {"low": 0.1, "high": 0.9}}}), "unknown parameter"),
        (with_(search={"num_samples": 0}), "num_samples must be >= 1"),
        (with_(alpha={"grid": [0.0, 1.2]}), "grid values must lie in \\[0, 1\\]"),
        (with_(attack={"eps": 0.0}), "^attack.eps must be a finite number > 0"),
        (with_(attack={"eps": "big"}), "^attack.eps must be float"),
        (with_(mrc={"epsilon": -0.1}), "^mrc.epsilon must be > 0"),
        (with_(finetune={"bn": "train"}), "^finetune.bn must be one of"),
        (with_(modules={"choice": "named"}), "needs `name`"),
        (with_(data={"datset": "digits"}), "unknown field\\(s\\) \\['datset'\\]"),
        (with_(model={"checkpoint": "x.pt"}), "give exactly one of name"),
    ],
)
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


def test_a_config_builds_on_bases_with_paths_relative_to_each_file(tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "common.yaml").write_text(
        yaml.safe_dump({"data": {"dataset": "digits", "root": "../data"}, "search": {"num_samples": 5, "seed": 3}})
    )
    path = write(
        tmp_path, {"defaults": ["bases/common.yaml"], "name": "t", "model": BASE["model"], "search": {"num_samples": 7}}
    )
    config = load_config(path)
    assert config.search.num_samples == 7 and config.search.seed == 3  # the file wins; the rest comes from the base
    assert config.data.root == str(tmp_path / "data")  # relative to the base's folder, not the config's


def test_bases_that_include_themselves_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("defaults: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match="include it again"):
        load_config(tmp_path / "a.yaml")


def test_set_overrides_any_field_typed_and_checked(tmp_path):
    path = write(tmp_path, BASE)
    config = load_config(
        path, assignments=["attack.eps=0.03", "search.num_samples=32", "ood.enabled=false", "alpha.grid=[0, 0.5, 1]"]
    )
    assert config.attack.eps == 0.03 and config.search.num_samples == 32 and not config.ood.enabled
    assert config.alpha.grid == (0.0, 0.5, 1.0)
    with pytest.raises(ConfigError, match="^attack.eps must be float"):
        load_config(path, assignments=["attack.eps=big"])
    with pytest.raises(ConfigError, match="unknown field\\(s\\) \\['epz'\\]"):
        load_config(path, assignments=["attack.epz=0.1"])
    with pytest.raises(ConfigError, match="FIELD.PATH=VALUE"):
        load_config(path, assignments=["attack.eps"])


def test_the_resolved_config_round_trips(tmp_path):
    from rift_sweep.config import save_resolved_config

    config = load_config(
        write(tmp_path, with_(search={"num_samples": 3})), {"output_dir": str(tmp_path / "o")}, ["attack.eps=0.05"]
    )
    saved = save_resolved_config(config)
    again = load_config(saved)
    assert dataclasses.replace(again, source=None) == dataclasses.replace(config, source=None)


@pytest.mark.parametrize(
    "raw,message",
    [
        (
            with_(search={"objectives": ["std_acc", "rob_acc", "ood_acc"]}, ood={"enabled": False}),
            "objectives holds ood_acc but ood.enabled is false",
        ),
        (with_(name="it's"), "may hold only letters"),
        (with_(data={"dataset": "imagenet-21k"}), "dataset 'imagenet-21k' is unknown"),
        (with_(model={"name": "vit"}), "name 'vit' is not a built-in model"),
        (with_(data={"dataset": "digits", "val_size": 1.5}), "val_size must be"),
        (with_(search={"space": {"lr": {"low": 0.01, "high": 0.1}}}), "the paper's finetune.lr = 0.001 lies outside"),
    ],
)
def test_rules_across_fields_are_checked_at_load(tmp_path, raw, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, raw))
