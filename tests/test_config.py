"""One home for settings: the stage configs, the run settings, the method rules, the CLI choices."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from cafeslim.cli import export as export_cli
from cafeslim.cli import inspect_bins as bins_cli
from cafeslim.cli import search as search_cli
from cafeslim.config import (DEMO_PRESET, BinsConfig, ExportConfig, MinMinConfig, RunSettings,
                             SearchConfig, TrainConfig, choices, load_settings, resolve_settings)
from cafeslim.errors import ConfigError

# config.yaml exactly as the release before the settings reshape wrote it (README demo run).
OLD_CONFIG = """\
format: cafeslim.run/1
model: timm:test_resnet
data: demo
pretrained: false
weights: null
train:
  epochs: 6
  batch_size: 64
  lr: 0.2
  momentum: 0.9
  weight_decay: 0.0001
  label_smoothing: 0.1
  warmup_epochs: 0.5
  amp: 'off'
  channels_last: false
  device: auto
  workers: 4
  seed: 0
  val_split: 0.1
  img_size: 64
  offset: 1
  candidates: 0
  select_batch: 1.0
  minmin_start: 0.0
  sandwich: false
  log_every: 5
  ckpt_every: 500
  max_steps: null
search:
  flops: 50%
  method: cafenet
  searcher: evolution
  population: 12
  iterations: 6
  parents: 4
  samples: 72
  low: 0.97
  eval_batches: null
  recal_batches: 2
  stages: 1
  alpha: 2.0
bins:
  beta: 1.0
  divisor: 1
  min_width: null
  order: natural
"""


def test_an_old_run_folder_still_loads_to_the_same_settings(tmp_path):
    (tmp_path / "config.yaml").write_text(OLD_CONFIG)
    saved = load_settings(tmp_path)
    again = resolve_settings("timm:test_resnet", None, None, {"search": {"flops": "50%"}})
    # The demo's image size is filled in by the build, not by the resolution.
    # ... and so is the augmentation: before it had settings the supernet saw plain digits.
    # select_batch was written out (1.0); the default has since moved to 0.5, and an old run
    # must keep what it trained with.
    old_train = replace(again.train, img_size=64, aug="none", select_batch=1.0)
    assert again.train.select_batch != 1.0
    assert saved == replace(again, train=old_train)
    assert saved.train.select_dtype is None  # a field the old file did not have
    assert again.train.aug == "auto"  # a new run gets the padded random crop


def test_augmentation_has_one_home_shared_by_search_and_train():
    from cafeslim.config import AugConfig, RetrainConfig

    names = {f.name for f in fields(AugConfig)}
    for cls in (TrainConfig, RetrainConfig):
        assert issubclass(cls, AugConfig) and names <= {f.name for f in fields(cls)}
        assert not names & set(cls.__annotations__)  # inherited, never declared again
    assert TrainConfig(scale=[0.5, 1]).scale == RetrainConfig(scale=(0.5, 1.0)).scale == (0.5, 1.0)
    for bad in ({"hflip": 2.0}, {"reprob": -1.0}, {"ratio": [2, 1]}, {"aug": "none", "scale": [0.5, 1]}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)


def test_train_config_is_a_minmin_config_without_copies():
    cfg = TrainConfig(offset=2, candidates=3, sandwich=True, select_dtype="bf16")
    assert isinstance(cfg, MinMinConfig)
    step = cfg.minmin()
    assert type(step) is MinMinConfig and (step.offset, step.candidates, step.sandwich,
                                           step.select_dtype) == (2, 3, True, "bf16")
    assert {f.name for f in fields(MinMinConfig)} <= {f.name for f in fields(TrainConfig)}
    with pytest.raises(ConfigError, match="select_dtype must be one of"):
        TrainConfig(select_dtype="int8")


def test_method_rules_hold_in_one_place():
    fixed = RunSettings("m", search=SearchConfig(method="fixed"), train=TrainConfig(offset=1))
    assert fixed.train.offset == 0
    assert resolve_settings("m", {"search": {"method": "fixed"}, "train": {"offset": 2}}, None,
                            {}).train.offset == 0  # a YAML offset gives way to the method
    with pytest.raises(ConfigError, match="--method fixed is r = 0; it takes no --offset 2"):
        resolve_settings("m", None, None, {"search": {"method": "fixed"}, "train": {"offset": 2}})
    with pytest.raises(ConfigError, match="--method uniform trains no supernet"):
        SearchConfig(method="uniform", stages=2)


def test_demo_preset_applies_to_demo_data_only():
    demo = resolve_settings("m", None, None, {})
    real = resolve_settings("m", None, "/data/imagenet", {})
    assert demo.search.population == DEMO_PRESET["search"]["population"] != real.search.population
    assert real.train == TrainConfig()


@pytest.mark.parametrize("enum, config, name", [
    (search_cli.Method, SearchConfig, "method"),
    (search_cli.SearcherChoice, SearchConfig, "searcher"),
    (search_cli.Device, TrainConfig, "device"),
    (search_cli.Sampling, TrainConfig, "sampling"),
    (export_cli.Order, ExportConfig, "order"),
    (export_cli.Init, ExportConfig, "init"),
    (bins_cli.OrderChoice, BinsConfig, "order"),
])
def test_cli_choices_are_the_configs_literals(enum, config, name):
    assert [e.value for e in enum] == list(choices(config, name))


def test_choices_of_a_plain_field_is_an_error():
    with pytest.raises(ConfigError, match="is not a choice"):
        choices(TrainConfig, "epochs")


def test_demo_preset_fine_tunes_gently_from_weights():
    from cafeslim.config import DEMO_PRESET, DEMO_TRAINED_START, resolve_settings

    scratch = resolve_settings("timm:test_resnet", None, "demo", {})
    trained = resolve_settings("timm:test_resnet", None, "demo", {}, weights="w.safetensors")
    flagged = resolve_settings("timm:test_resnet", None, "demo", {"train": {"lr": 0.3}}, weights="w")
    assert scratch.train.lr == DEMO_PRESET["train"]["lr"]
    assert trained.train.lr == DEMO_TRAINED_START["lr"] and trained.train.warmup_epochs == 0
    assert flagged.train.lr == 0.3
