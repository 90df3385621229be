"""The pretrained flow end to end, on the command line, with a tiny recipe.

original trained by ``cafeslim train MODEL`` → its ``weights.safetensors`` as ``--weights`` of
``search`` (channels then ordered by L1 norm by default) → ``train RUN --init inherit
--teacher original`` → ``eval``. Every step is a fresh process (imports, exports): slow.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

SMALL = ("--img-size", "16", "-b", "64", "--device", "cpu", "--threads", "1")


@pytest.mark.slow
def test_train_original_then_search_train_inherit_with_kd_and_eval(tmp_path, cli):
    orig = tmp_path / "orig"
    res = cli("train", "timm:test_resnet", "--epochs", "1", *SMALL, "--out", orig, timeout=900)
    assert res.returncode == 0, res.stderr
    weights = orig / "weights.safetensors"
    assert weights.is_file()

    run = tmp_path / "run"
    res = cli("search", "timm:test_resnet", "--weights", weights, "--flops", "50%", "--epochs", "1",
              "--population", "4", "--iterations", "1", "--recal-batches", "1",
              "--eval-batches", "1", *SMALL, "--out", run, timeout=900)
    assert res.returncode == 0, res.stderr
    settings = yaml.safe_load((run / "config.yaml").read_text())
    assert settings["bins"]["order"] == "l1" and settings["weights"] == str(weights)
    # The supernet started from the trained original's weights (in L1 order, not as random).
    sd = torch.load(run / "last.pt", weights_only=False)["model"]
    assert any(k.endswith("conv1.0.weight") for k in sd)

    res = cli("train", run, "--init", "inherit", "--epochs", "1", *SMALL, timeout=900)
    assert res.returncode == 0, res.stderr
    # The default teacher with --weights (rich wraps long lines: compare words).
    assert "teacher original (timm:test_resnet)" in " ".join(res.stdout.split())
    meta = json.loads((run / "train" / "widths.json").read_text())
    assert meta["trained"]["init"] == "inherit" and meta["trained"]["teacher"].startswith("original")
    assert meta["flops"]["slim"] < 0.55 * meta["flops"]["full"]

    res = cli("eval", run / "train", timeout=600)
    assert res.returncode == 0, res.stderr
    assert "359 held-out images" in " ".join(res.stdout.split())  # the demo's test digits


def test_weights_order_channels_by_l1_unless_told_otherwise(tmp_path):
    from cafeslim.config import resolve_settings

    flags = {"search": {"flops": "50%"}}
    assert resolve_settings("timm:test_resnet", None, None, flags).bins.order == "natural"
    assert resolve_settings("timm:test_resnet", None, None, flags, weights="w.pt").bins.order == "l1"
    assert resolve_settings("timm:test_resnet", None, None, flags, pretrained=True).bins.order == "l1"
    told = {**flags, "bins": {"order": "natural"}}
    assert resolve_settings("timm:test_resnet", None, None, told, pretrained=True).bins.order == "natural"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("bins:\n  order: natural\n")  # the YAML counts as telling, too
    assert resolve_settings("timm:test_resnet", cfg, None, flags, weights="w.pt").bins.order == "natural"
    # A resumed run keeps what its config.yaml says.
    saved = resolve_settings("timm:test_resnet", None, None, flags, weights="w.pt").to_dict()
    assert resolve_settings(None, saved, None, {}, preset=False).bins.order == "l1"
