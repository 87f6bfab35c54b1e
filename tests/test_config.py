"""Config validation: unknown keys, wrong types and unsafe YAML are errors
that name the key and what would be valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxrec.config import ConfigError, to_yaml
from jaxrec.tasks import load_config
from jaxrec.tasks.encode import EncodeConfig


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_round_trip_through_yaml(tmp_path):
    config = load_config(None)
    assert config == EncodeConfig()
    assert load_config(_write(tmp_path, to_yaml(config))) == config


def test_typo_names_the_key_suggests_and_lists_valid_keys(tmp_path):
    path = _write(tmp_path, "encode:\n  poolng: mean\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "encode.poolng" in message
    assert "did you mean 'pooling'" in message and "pooling, mask, batch_size, max_length" in message


@pytest.mark.parametrize(
    "text,expected",
    [
        ("encode:\n  batch_size: '64'\n", "encode.batch_size: expected int"),
        ("encode:\n  batch_size: true\n", "encode.batch_size: expected int"),
        ("encode:\n  pooling: max\n", "encode.pooling: expected 'mean' | 'last'"),
        ("model: smollm2\n", "model: expected a mapping"),
        ("encode:\n  batch_size: 0\n", "batch_size must be positive"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("task: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ],
)
def test_bad_values_are_named(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected.replace("|", r"\|").replace("(", r"\(")):
        load_config(_write(tmp_path, text))


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    config = load_config(None, ["encode.batch_size=32", "model.dtype=bfloat16", "run_dir=out/x"])
    assert (config.encode.batch_size, config.model.dtype, config.run_dir) == (32, "bfloat16", "out/x")
    with pytest.raises(ConfigError, match="unknown key 'encode.size'"):
        load_config(None, ["encode.size=3"])
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(None, ["encode.batch_size"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    from jaxrec.tasks import TASKS

    assert load_config(path).task in TASKS


def test_exponent_floats_without_a_dot_are_numbers_but_quoted_strings_are_not():
    assert load_config(None, ["task=mntp", "optimizer.learning_rate=1e-9"]).optimizer.learning_rate == 1e-9
    with pytest.raises(ConfigError, match="optimizer.learning_rate: expected float"):
        load_config(None, ["task=mntp", 'optimizer.learning_rate="1e-9"'])
