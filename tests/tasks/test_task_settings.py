"""The task as a setting (config.yaml, flags, presets, run names) and through the Python API."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cafeslim.config import (DEMO_PRESET, RetrainConfig, RunSettings, SearchConfig, TaskName,
                             choices, load_settings, resolve_settings)
from cafeslim.errors import ConfigError


def test_task_is_written_to_config_yaml_and_old_folders_load_as_classification(tmp_path):
    s = resolve_settings("tv:lraspp_mobilenet_v3_large", None, None, {"search": {"flops": "50%"}},
                         task="segmentation")
    doc = s.to_dict()
    assert doc["task"] == "segmentation" and RunSettings.from_dict(doc) == s
    del doc["task"]   # a folder written before tasks existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(doc))
    assert load_settings(tmp_path).task == "classification"
    doc["task"] = "depth"
    with pytest.raises(ConfigError, match="invalid task 'depth'"):
        RunSettings.from_dict(doc)


def test_task_precedence_and_its_demo_preset():
    yaml_doc = {"task": "multilabel", "search": {"flops": "50%"}}
    assert resolve_settings("m", yaml_doc, None, {}).task == "multilabel"       # YAML
    assert resolve_settings("m", yaml_doc, None, {}, task="segmentation").task == "segmentation"
    seg = resolve_settings("m", None, None, {}, task="segmentation")
    from cafeslim.tasks import get_task

    preset = get_task("segmentation").demo_preset
    assert seg.train.epochs == preset["train"]["epochs"] != DEMO_PRESET["train"]["epochs"]
    assert seg.search.population == preset["search"]["population"]
    assert seg.search.recal_batches == DEMO_PRESET["search"]["recal_batches"]   # the rest stays
    flagged = resolve_settings("m", None, None, {"train": {"epochs": 2}}, task="segmentation")
    assert flagged.train.epochs == 2                                            # flags win
    real = resolve_settings("m", None, "/data/voc", {}, task="segmentation")
    assert real.train.epochs is None                                            # folders: defaults


def test_cli_choices_come_from_the_literal():
    import typing

    from cafeslim.cli import eval as eval_cli
    from cafeslim.cli import search as search_cli
    from cafeslim.cli import train as train_cli

    values = typing.get_args(TaskName)
    assert choices(RunSettings, "task") == values == choices(RetrainConfig, "task")
    for module in (search_cli, train_cli, eval_cli):
        assert tuple(m.value for m in module.TaskChoice) == values


def test_default_run_folder_names_the_task_and_resume_refuses_another():
    from cafeslim.pipeline.rundir import check_resume, default_run_dir

    s = RunSettings("tv:lraspp_mobilenet_v3_large", task="segmentation",
                    search=SearchConfig(flops="50%", method="uniform"))
    assert default_run_dir(s) == Path("runs/lraspp_mobilenet_v3_large-50pct-segmentation-uniform")
    assert default_run_dir(replace(s, task="classification")).name == "lraspp_mobilenet_v3_large-50pct-uniform"
    with pytest.raises(ConfigError, match="task 'segmentation' -> 'multilabel'"):
        check_resume(s, replace(s, task="multilabel"))


def test_train_and_eval_keep_the_task_a_run_or_export_was_made_for():
    from cafeslim.export.evaluate import _task
    from cafeslim.training.run import train_task
    from cafeslim.training.target import Target

    run = Target("run", "runs/x", Path("runs/x"), "tv:lraspp_mobilenet_v3_large", task="segmentation")
    assert train_task(run, RetrainConfig()).name == "segmentation"
    with pytest.raises(ConfigError, match="was made for segmentation, not --task multilabel"):
        train_task(run, RetrainConfig(task="multilabel"))
    model = Target("model", "timm:test_resnet", None, "timm:test_resnet")
    assert train_task(model, RetrainConfig()).name == "classification"
    assert train_task(model, RetrainConfig(task="multilabel")).name == "multilabel"
    assert _task({"task": "multilabel"}, None).name == "multilabel"
    assert _task({}, None).name == "classification"   # an export made before tasks existed
    with pytest.raises(ConfigError, match="made for multilabel"):
        _task({"task": "multilabel"}, "segmentation")


def test_python_api_trains_and_searches_a_segmentation_supernet(monkeypatch):
    """``cafeslim.get_task`` gives minmin_step's loss and search_widths' metric."""
    import cafeslim
    from cafeslim.config import TrainConfig
    from cafeslim.data import build_data
    from cafeslim.metrics import measure
    from cafeslim.models import create

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    torch.manual_seed(0)
    info = create("tiny_seg:build", num_classes=11)
    data = build_data("demo", info, TrainConfig(batch_size=16, img_size=32, aug="none"), "segmentation")
    task = cafeslim.get_task("segmentation")
    x = info.example_input()
    graph = cafeslim.analyze(info.model, x)
    net = cafeslim.Supernet(info.model, graph, cafeslim.make_bins(graph)).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step, (images, masks) in enumerate(data.epoch_batches(0)):
        losses.append(cafeslim.minmin_step(net, images, masks, task.loss, opt,
                                           rng=np.random.default_rng(step)).loss)
        if step == 5:
            break
    assert all(np.isfinite(losses))
    val = [b for _, b in zip(range(2), data.val)]
    res = cafeslim.search_widths(net, val, data.calib, budget="50%", task=task,
                                 config=SearchConfig(population=2, iterations=1, parents=1,
                                                     recal_batches=1))
    assert 0.0 <= res.score <= 1.0
    small = net.export_subnet(res.spec).eval()   # keeps the recalibrated statistics
    assert measure(small, val, task)[0]["miou"] == pytest.approx(res.score)

