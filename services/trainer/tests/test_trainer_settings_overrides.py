"""Retraining runs take config overrides from the trainer's settings, checked at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from defectloop.trainer.config import resolve_config
from defectloop.trainer.settings import TrainerSettings

pytestmark = pytest.mark.unit


def test_overrides_from_the_environment_reach_the_resolved_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEFECTLOOP_TRAINER_TRAIN_OVERRIDES", '{"train": {"epochs": 7}}')
    settings = TrainerSettings()
    assert settings.train_overrides == {"train": {"epochs": 7}}
    config = resolve_config(settings.train_preset, overrides=settings.train_overrides)
    assert config.train.epochs == 7
    assert resolve_config(settings.train_preset).train.epochs != 7


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEFECTLOOP_TRAINER_TRAIN_OVERRIDES": '{"train": {"epochs": -1}}'}, "epochs"),
        ({"DEFECTLOOP_TRAINER_TRAIN_OVERRIDES": '{"trian": {"epochs": 3}}'}, "trian"),
        ({"DEFECTLOOP_TRAINER_TRAIN_PRESET": "fastest"}, "unknown preset 'fastest'"),
    ],
)
def test_a_bad_training_config_stops_the_trainer_at_start_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=message):
        TrainerSettings()
