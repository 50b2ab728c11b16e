from __future__ import annotations

from pathlib import Path

import pytest

from defectloop.common.errors import ConfigError
from defectloop.trainer.config import available_presets, deep_merge, resolve_config

pytestmark = pytest.mark.unit


def test_presets_quick_and_default_exist() -> None:
    assert {"quick", "default"} <= set(available_presets())


def test_preset_overrides_defaults_and_keeps_the_rest() -> None:
    quick, default = resolve_config("quick"), resolve_config("default")
    assert default.train.epochs != quick.train.epochs
    assert default.labels == quick.labels  # untouched keys come from defaults.yaml


def test_user_overrides_win_over_the_preset(tmp_path: Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text("train:\n  epochs: 3\n")
    cfg = resolve_config("default", overrides=path)
    assert cfg.train.epochs == 3
    assert cfg.model.input_size == resolve_config("default").model.input_size


def test_deep_merge_merges_mappings_and_replaces_leaves() -> None:
    merged = deep_merge({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 5}, "d": [2]})
    assert merged == {"a": {"b": 5, "c": 2}, "d": [2]}


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"train\.epoch"):
        resolve_config("quick", overrides={"train": {"epoch": 3}})


def test_invalid_value_is_rejected() -> None:
    with pytest.raises(ConfigError, match="input_size"):
        resolve_config("quick", overrides={"model": {"input_size": [100, 100]}})


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config("turbo")
    assert "quick" in (info.value.hint or "")


def test_config_hash_changes_with_any_value() -> None:
    a = resolve_config("quick")
    b = resolve_config("quick", overrides={"train": {"lr": 0.001}})
    assert a.sha256() != b.sha256()
    assert a.sha256() == resolve_config("quick").sha256()
