"""Structured, hierarchical training configuration.

Layers, each merged over the previous one: ``configs/defaults.yaml`` → ``configs/presets/<preset>.yaml``
→ ``configs/sites/<site>.yaml`` (when present) → the user's ``--config`` file. The merged mapping is
validated by pydantic models that forbid unknown keys, so a typo fails loudly instead of being ignored.
The resolved config is what goes into the bundle; its hash (over canonical JSON) is part of lineage.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from defectloop.common.errors import ConfigError

CONFIG_PACKAGE = "defectloop.trainer"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    input_size: tuple[int, int] = Field(
        description="Network input [H, W] in pixels; multiples of 32."
    )
    width: int = Field(ge=4, le=128, description="Channels of the first backbone stage.")
    head_width: int = Field(ge=4, le=256, description="Channels of the neck and heads.")

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, v: tuple[int, int]) -> tuple[int, int]:
        # The backbone downsamples by 32 then upsamples back to stride 4: sizes must divide.
        if any(s % 32 or s < 32 for s in v):
            raise ValueError(f"input_size {list(v)} must be multiples of 32 (>= 32)")
        return v


class AugmentConfig(_Strict):
    brightness: float = Field(ge=0, le=1, description="Max additive shift, fraction of 255.")
    contrast: float = Field(ge=0, le=1, description="Max relative contrast change.")
    shift: float = Field(ge=0, le=0.5, description="Max translation, fraction of the input size.")
    blur_prob: float = Field(ge=0, le=1)
    blur_max_sigma: float = Field(ge=0, le=5)
    noise_prob: float = Field(ge=0, le=1)
    noise_max_std: float = Field(ge=0, le=64, description="Gaussian noise std in gray levels.")
    hflip: bool
    vflip: bool


class TrainConfig(_Strict):
    epochs: int = Field(ge=1, le=1000)
    batch_size: int = Field(ge=1, le=1024)
    lr: float = Field(gt=0, le=1)
    weight_decay: float = Field(ge=0, le=1)
    warmup_epochs: int = Field(ge=0)
    num_threads: int = Field(
        ge=1,
        le=256,
        description="torch intra-op threads; fixed so that reductions are reproducible.",
    )
    val_fraction: float = Field(ge=0, lt=1)
    crop: tuple[int, int] | None = Field(
        default=None,
        description="Train on random [H, W] crops of the resized images (multiples of 32): "
        "several times more steps for the same CPU time; inference still sees whole images.",
    )
    crop_on_object: float = Field(
        default=0.7, ge=0, le=1, description="Share of crops centred near a random defect."
    )
    size_weight: float = Field(ge=0)
    offset_weight: float = Field(ge=0)

    @field_validator("crop")
    @classmethod
    def _crop_multiple_of_32(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and any(s % 32 or s < 32 for s in v):
            raise ValueError(f"crop {list(v)} must be multiples of 32 (>= 32)")
        return v


class DecodingConfig(_Strict):
    score_threshold: float = Field(ge=0, le=1)
    nms_iou: float = Field(ge=0, le=1)
    top_k: int = Field(ge=1, le=10000)
    decision_threshold: float = Field(ge=0, le=1)


class TrainerConfig(_Strict):
    name: str = Field(min_length=1)
    labels: tuple[str, ...] = Field(
        min_length=1, description="Class names; index = heatmap channel."
    )
    model: ModelConfig
    augment: AugmentConfig
    train: TrainConfig
    decoding: DecodingConfig

    @model_validator(mode="after")
    def _unique_labels(self) -> TrainerConfig:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {list(self.labels)}")
        crop = self.train.crop
        if crop is not None and (
            crop[0] > self.model.input_size[0] or crop[1] > self.model.input_size[1]
        ):
            raise ValueError(f"train.crop {list(crop)} exceeds model.input_size")
        return self

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``: mappings merge recursively, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _configs_dir() -> Path:
    return Path(str(resources.files(CONFIG_PACKAGE) / "configs"))


def available_presets() -> list[str]:
    return sorted(p.stem for p in (_configs_dir() / "presets").glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found", hint="check the path") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    return data


def validate_config(data: dict[str, Any], *, source: str = "config") -> TrainerConfig:
    try:
        return TrainerConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(
            f"invalid {source}: {where}: {first['msg']} ({exc.error_count()} error(s))",
            hint="compare with services/trainer/src/defectloop/trainer/configs/defaults.yaml",
        ) from exc


def resolve_config(
    preset: str = "quick",
    *,
    site: str | None = None,
    overrides: Path | dict[str, Any] | None = None,
) -> TrainerConfig:
    """Build the validated config from defaults + preset + site overrides + user overrides."""
    root = _configs_dir()
    preset_path = root / "presets" / f"{preset}.yaml"
    if not preset_path.exists():
        raise ConfigError(
            f"unknown preset {preset!r}", hint=f"choose one of: {', '.join(available_presets())}"
        )
    data = deep_merge(_read_yaml(root / "defaults.yaml"), _read_yaml(preset_path))
    if site is not None:
        site_path = root / "sites" / f"{site}.yaml"
        if site_path.exists():
            data = deep_merge(data, _read_yaml(site_path))
    if overrides is not None:
        extra = overrides if isinstance(overrides, dict) else _read_yaml(overrides)
        data = deep_merge(data, extra)
    return validate_config(data, source=f"config (preset {preset!r})")
