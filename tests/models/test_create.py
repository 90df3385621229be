"""Model creation by name, input sizes, weights files and offline behaviour of --pretrained."""

import importlib
import os
import pickle
import sys
import textwrap
import time
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

from cafeslim.errors import CafeslimError, ConfigError, ModelNotFoundError, WeightsError
from cafeslim.models import ModelInfo, create, load_weights, read_state_dict, resolve_name

# The network probe the offline tests replace (create() calls it through this module).
hub_mod = importlib.import_module("cafeslim.models.hub")

# A user's own model module, as `create("tiny_user_models:build")` finds it on sys.path.
TINY_MODULE = "tiny_user_models"
TINY_SOURCE = textwrap.dedent("""\
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self, num_classes: int = 10, in_chans: int = 3):
            super().__init__()
            self.conv = nn.Conv2d(in_chans, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn(self.conv(x)))
            return self.fc(x.mean((2, 3)))


    class SizedNet(TinyNet):
        default_input_size = (32, 48)


    def build():
        return TinyNet()


    def build_with_classes(num_classes: int = 10):
        return TinyNet(num_classes=num_classes)


    def build_gray():
        return TinyNet(in_chans=1)


    def build_sized():
        return SizedNet()


    def not_a_model():
        return 42


    INSTANCE = TinyNet(num_classes=5)
""")


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """A user model module written to tmp_path, put first on sys.path; returns its name."""
    (tmp_path / f"{TINY_MODULE}.py").write_text(TINY_SOURCE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, TINY_MODULE, raising=False)   # imported afresh from here
    yield TINY_MODULE
    sys.modules.pop(TINY_MODULE, None)


# --- name resolution ---------------------------------------------------------------------------

def test_tv_prefix():
    info = create("tv:resnet18")
    assert isinstance(info, ModelInfo)
    assert info.name == "tv:resnet18"
    assert type(info.model).__module__.startswith("torchvision")
    assert not info.model.training
    assert info.input_size == (3, 224, 224)
    assert info.model(info.example_input()).shape == (1, 1000)


def test_timm_prefix_and_tag():
    info = create("timm:test_resnet.r160_in1k")
    assert info.name == "timm:test_resnet.r160_in1k"
    assert not info.model.training
    assert create("timm:test_resnet").name == "timm:test_resnet"


def test_bare_name_prefers_timm_then_torchvision():
    assert resolve_name("resnet50") == ("timm", "resnet50")
    assert resolve_name("resnet50.a1_in1k") == ("timm", "resnet50.a1_in1k")
    assert resolve_name("vit_b_16") == ("tv", "vit_b_16")  # torchvision only
    assert resolve_name("tv:resnet50") == ("tv", "resnet50")
    assert create("test_vit").name == "timm:test_vit"


def test_unknown_names_suggest_close_ones():
    with pytest.raises(ModelNotFoundError, match=r"did you mean .*resnet50"):
        resolve_name("resnt50")
    with pytest.raises(ModelNotFoundError, match=r"did you mean tv:resnet50"):
        resolve_name("tv:resnt50")
    with pytest.raises(ModelNotFoundError, match=r"timm:test_resnet"):
        resolve_name("timm:test_resnett")
    with pytest.raises(ModelNotFoundError, match="unknown model 'xyzzy'"):
        resolve_name("xyzzy")


def test_suggestions_are_fast():
    start = time.perf_counter()
    for _ in range(3):
        with pytest.raises(ModelNotFoundError):
            resolve_name("vit_base_patch16_224_not_there")
    assert time.perf_counter() - start < 2.0


def test_unknown_pretrained_tag():
    with pytest.raises(ModelNotFoundError, match="no pretrained tag 'nope'.*r160_in1k"):
        create("timm:test_resnet.nope")


def test_torchvision_models_of_every_kind_resolve():
    assert resolve_name("tv:fasterrcnn_resnet50_fpn") == ("tv", "fasterrcnn_resnet50_fpn")
    assert resolve_name("tv:raft_small") == ("tv", "raft_small")
    with pytest.raises(ConfigError, match="quantized .*slim tv:resnet18"):
        resolve_name("tv:quantized_resnet18")


def test_user_callable(tiny):
    info = create(f"{tiny}:build")
    assert info.name == f"{tiny}:build"
    assert type(info.model).__name__ == "TinyNet"
    assert not info.model.training
    assert info.input_size == (3, 224, 224)
    assert info.model(info.example_input(2)).shape == (2, 10)


def test_user_instance_and_nested_attribute(tiny):
    assert create(f"{tiny}:INSTANCE").model.fc.out_features == 5
    assert type(create(f"{tiny}:SizedNet").model).__name__ == "SizedNet"  # a class is callable


def test_user_input_size_rules(tiny):
    assert create(f"{tiny}:build_gray").input_size == (1, 224, 224)
    assert create(f"{tiny}:build_sized").input_size == (3, 32, 48)


def test_user_callable_errors(tiny):
    with pytest.raises(ModelNotFoundError, match="no module named 'no_such_pkg'"):
        create("no_such_pkg.models:build")
    with pytest.raises(ModelNotFoundError, match="has no attribute 'buld'.*did you mean build"):
        create(f"{tiny}:buld")
    with pytest.raises(ModelNotFoundError, match="not a torch.nn.Module"):
        create(f"{tiny}:not_a_model")
    with pytest.raises(ModelNotFoundError, match="form package.module:callable"):
        create(f"{tiny}:")
    with pytest.raises(ConfigError, match="num_classes"):
        create(f"{tiny}:build", num_classes=3)
    with pytest.raises(ConfigError):
        create(f"{tiny}:build", pretrained=True)


def test_num_classes_passes_through(tiny):
    assert create("tv:resnet18", num_classes=7).model.fc.out_features == 7
    assert create("timm:test_resnet", num_classes=7).model.get_classifier().out_features == 7
    assert create(f"{tiny}:build_with_classes", num_classes=7).model.fc.out_features == 7


# --- input sizes and example inputs ------------------------------------------------------------

def test_input_sizes():
    assert create("tv:inception_v3").input_size == (3, 299, 299)
    info = create("timm:test_vit")
    assert info.input_size == (3, 160, 160)
    assert info.data_config["input_size"] == (3, 160, 160)
    assert {"mean", "std", "interpolation", "crop_pct"} <= set(info.data_config)
    assert info.model(info.example_input()).shape == (1, 1000)


def test_example_input_is_deterministic():
    info = create("timm:test_resnet")
    a, b = info.example_input(2), info.example_input(2)
    assert a.shape == (2, 3, 160, 160)
    assert torch.equal(a, b)


# --- weights files -----------------------------------------------------------------------------

@pytest.fixture
def r18_state():
    torch.manual_seed(1)
    return create("tv:resnet18", num_classes=10).model.state_dict()


def _same(model, state):
    got = model.state_dict()
    return all(torch.equal(got[k], v) for k, v in state.items())


@pytest.mark.parametrize("wrap", [None, "model", "state_dict", "model_state_dict", "state_dict_ema"])
@pytest.mark.parametrize("ddp", [False, True])
def test_pt_round_trip_with_wrappers(tmp_path, r18_state, wrap, ddp):
    state = OrderedDict((f"module.{k}" if ddp else k, v) for k, v in r18_state.items())
    payload = state if wrap is None else {wrap: state, "epoch": 3, "optimizer": {"lr": 0.1}}
    path = tmp_path / "w.pth"
    torch.save(payload, path)
    info = create("tv:resnet18", num_classes=10, weights=path)
    assert _same(info.model, r18_state)
    assert not info.model.training


def test_state_dict_preferred_over_ema(tmp_path, r18_state):
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in r18_state.items()}
    path = tmp_path / "w.pt"
    torch.save({"state_dict_ema": ema, "state_dict": r18_state}, path)
    assert _same(create("tv:resnet18", num_classes=10, weights=path).model, r18_state)


def test_safetensors_round_trip(tmp_path, r18_state):
    path = tmp_path / "w.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in r18_state.items()}, str(path))
    assert set(read_state_dict(path)) == set(r18_state)
    assert _same(create("tv:resnet18", num_classes=10, weights=str(path)).model, r18_state)


def test_shape_mismatch_names_keys(tmp_path, r18_state):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in r18_state.items()}, str(path))
    with pytest.raises(WeightsError, match=r"fc\.weight: file \[10, 512\] vs model \[1000, 512\]"):
        create("tv:resnet18", weights=path)


def test_missing_and_unexpected_keys(tmp_path, r18_state):
    state = dict(r18_state)
    state.pop("conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"missing: conv1\.weight.*unexpected: extra\.weight"):
        load_weights(create("tv:resnet18", num_classes=10).model, path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    path.write_bytes(b"\x00garbage, not weights" * 10)
    with pytest.raises(WeightsError, match="cannot read"):
        read_state_dict(path)


def test_truncated_pt(tmp_path, r18_state):
    path = tmp_path / "w.pt"
    torch.save(r18_state, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="cannot read"):
        read_state_dict(path)


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        create("timm:test_resnet", weights=tmp_path / "nope.pt")
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown suffix"):
        read_state_dict(tmp_path / "w.h5")


def test_no_state_dict_inside(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"epoch": 3, "best": 0.5}, path)
    with pytest.raises(WeightsError, match="no state dict"):
        read_state_dict(path)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": evil}, path)
    with pytest.raises(WeightsError, match="refused .* for safety"):
        read_state_dict(path)
    assert not marker.exists()
    # the same with a raw (legacy, non-zip) pickle
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(WeightsError):
        read_state_dict(raw)
    assert not marker.exists()


def test_weights_errors_are_cafeslim_errors():
    assert issubclass(WeightsError, CafeslimError) and WeightsError.exit_code == 2


# --- --pretrained without network (no real network access in the suite) -----------------------

@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setattr(hub_mod, "probe", lambda url, timeout=3.0: "example.org:443 unreachable (test)")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants

    # read at import time as well as from the environment: patch both
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


@pytest.mark.parametrize("name", ["tv:resnet18", "timm:test_resnet"])
def test_pretrained_offline_fails_fast(offline, name):
    start = time.perf_counter()
    with pytest.raises(WeightsError, match=r"could not download pretrained weights .*offline\?"):
        create(name, pretrained=True)
    assert time.perf_counter() - start < 10


def test_pretrained_download_error_is_weights_error(monkeypatch, tmp_path):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hub_mod, "probe", lambda url, timeout=3.0: None)

    def broken(*args, **kwargs):
        raise urllib.error.URLError("connection reset")

    # torch.hub.load_state_dict_from_url looks this global up at call time
    monkeypatch.setattr(torch.hub, "download_url_to_file", broken)
    with pytest.raises(WeightsError, match="tv:resnet18.*connection reset"):
        create("tv:resnet18", pretrained=True)


def test_pretrained_and_weights_are_exclusive(tmp_path):
    with pytest.raises(ConfigError):
        create("tv:resnet18", pretrained=True, weights=tmp_path / "w.pt")


def test_tv_pretrained_num_classes_conflict():
    with pytest.raises(ConfigError, match="1000 classes"):
        create("tv:resnet18", pretrained=True, num_classes=10)
