"""Fixtures shared across the test suite.

Tests ask for these by argument name; nothing here is imported by a test module.

* ``analysed`` -- ``analysed(name, with_model_flops=False)``: a cafeslim model by name, randomly
  initialised, with its channel graph and FLOPs model (cached: an analysis takes a second or more).
* ``conv_chain`` / ``make_conv_chain`` -- a plain chain of convolutions (the setting of Eq. 6-7),
  analysed; and a factory for the bare module with other widths, kernels, strides or groups.
* ``small_cnn`` -- ``small_cnn(groups=1, side=16)``: a small conv-BN-ReLU net (one grouped, one
  residual block), its input, graph and FLOPs model (cached; analysis takes < 1 s).
* ``space_of`` -- ``space_of(b, beta=1.0, offset=1, **kw)``: the FLOPs-sensitive bins of such a net.
* ``synthetic_batches`` -- ``synthetic_batches(n, size=16, side=16, classes=4, seed=0)``:
  ``(images, labels)`` batches whose labels depend on the mean colour.
* ``readme_block`` -- ``readme_block(heading)``: the code of the first python block under
  ``## heading`` in README.md.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, List, NamedTuple, Tuple

import pytest
import torch
from torch import nn

if TYPE_CHECKING:  # imported where used: every test run loads this file
    from cafeslim.flops import FlopsModel
    from cafeslim.graph import ChannelGraph

README = Path(__file__).resolve().parents[1] / "README.md"


class Analysed(NamedTuple):
    model: nn.Module
    x: torch.Tensor
    graph: ChannelGraph
    fm: FlopsModel


# --------------------------------------------------------------------------- models by name

@functools.lru_cache(maxsize=None)
def _analysed(name: str, with_model_flops: bool = False) -> Analysed:
    """Randomly initialised model by cafeslim name, its graph and FLOPs model (cached)."""
    from cafeslim.flops import FlopsModel
    from cafeslim.graph import analyze
    from cafeslim.models import create

    torch.manual_seed(0)
    info = create(name)
    x = info.example_input()
    graph = analyze(info.model, x, source=info.name)
    fm = FlopsModel(graph, info.model, x) if with_model_flops else FlopsModel(graph)
    return Analysed(info.model, x, graph, fm)


@pytest.fixture(scope="session")
def analysed():
    """``analysed(name, with_model_flops=False) -> Analysed(model, x, graph, fm)``, cached."""
    return _analysed


# --------------------------------------------------------------------------- a plain conv chain

class _ConvChain(nn.Module):
    """A plain chain of convolutions (no BN, no residual): the setting of Eq. 6-7."""

    def __init__(self, widths=(3, 8, 16, 12), kernels=(3, 3, 1), strides=(1, 2, 1), groups=(1, 1, 1)):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], kernels[i], stride=strides[i],
                      padding=kernels[i] // 2, groups=groups[i], bias=False)
            for i in range(len(kernels)))
        self.fc = nn.Linear(widths[-1], 5)

    def forward(self, x):
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="session")
def make_conv_chain():
    """``make_conv_chain(widths=, kernels=, strides=, groups=)``: a new, untrained conv chain."""
    return _ConvChain


@pytest.fixture(scope="session")
def conv_chain(make_conv_chain):
    """The default conv chain (3 -> 8 -> 16 -> 12, 16x16 input), analysed with the model's FLOPs."""
    from cafeslim.flops import FlopsModel
    from cafeslim.graph import analyze

    torch.manual_seed(0)
    model = make_conv_chain().eval()
    x = torch.randn(1, 3, 16, 16)
    graph = analyze(model, x, source="chain")
    return Analysed(model, x, graph, FlopsModel(graph, model, x))


# --------------------------------------------------------------------------- a small CNN for search

class _SmallCNN(nn.Module):
    """conv-BN-ReLU blocks (one grouped, one residual) and a linear head."""

    def __init__(self, widths=(24, 32, 48, 48), classes: int = 4, groups: int = 1):
        super().__init__()
        c0, c1, c2, c3 = widths
        self.stem = nn.Sequential(nn.Conv2d(3, c0, 3, padding=1, bias=False), nn.BatchNorm2d(c0), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(c0, c1, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(c2),
                                nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(c2, c3, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c3))
        self.b4 = nn.Sequential(nn.Conv2d(c3, c3, 3, padding=1, bias=False), nn.BatchNorm2d(c3))
        self.fc = nn.Linear(c3, classes)

    def forward(self, x):
        x = self.b2(self.b1(self.stem(x)))
        x = torch.relu(self.b3(x))
        x = torch.relu(x + self.b4(x))
        return self.fc(x.mean((2, 3)))


@functools.lru_cache(maxsize=None)
def _small_cnn(groups: int = 1, side: int = 16) -> Analysed:
    from cafeslim.flops import FlopsModel
    from cafeslim.graph import analyze

    torch.manual_seed(0)
    model = _SmallCNN(groups=groups).eval()
    x = torch.randn(1, 3, side, side)
    graph = analyze(model, x, source="small-cnn")
    return Analysed(model, x, graph, FlopsModel(graph, model, x))


@pytest.fixture(scope="session")
def small_cnn():
    """``small_cnn(groups=1, side=16) -> Analysed(model, x, graph, fm)``, cached (4 classes)."""
    return _small_cnn


def _space_of(b: Analysed, beta: float = 1.0, offset: int = 1, **kw):
    from cafeslim.bins import make_bins

    return make_bins(b.graph, b.fm, beta=beta, offset=offset, **kw)


@pytest.fixture(scope="session")
def space_of():
    """``space_of(b, beta=1.0, offset=1, **make_bins_kwargs)``: the bins of an analysed net."""
    return _space_of


def _synthetic_batches(n: int, size: int = 16, side: int = 16, classes: int = 4,
                       seed: int = 0) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Synthetic ``(images, labels)`` batches whose labels depend on the mean colour."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(size, 3, side, side, generator=g)
        y = (x.mean((2, 3)) @ torch.tensor([1.0, -1.0, 0.5]) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
        out.append((x, y % classes))
    return out


@pytest.fixture(scope="session")
def synthetic_batches():
    """``synthetic_batches(n, size=16, side=16, classes=4, seed=0)``: a new list each call."""
    return _synthetic_batches


# --------------------------------------------------------------------------- README examples

@pytest.fixture(scope="session")
def readme_block():
    """``readme_block(heading)``: the first ```python block under ``## heading`` in README.md."""
    def block(heading: str) -> str:
        text = README.read_text(encoding="utf-8")
        start = re.search(rf"^## {re.escape(heading)}[ \t]*$", text, re.M)
        assert start is not None, f"README.md has no '## {heading}' section"
        section = text[start.end():].split("\n## ", 1)[0]
        code = re.search(r"```python\n(.*?)```", section, re.S)
        assert code is not None, f"README.md's '{heading}' section has no python block"
        return code.group(1)

    return block


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny steps: on a shared 2-core machine a second
    OpenMP thread mostly spins, which makes such steps 4-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cli():
    """``cli(*args)``: run ``python -m cafeslim ARGS`` in a subprocess (one OpenMP thread)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args, timeout=300):
        return subprocess.run([sys.executable, "-m", "cafeslim", *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, env=env)
    return run


@pytest.fixture(scope="session")
def one_error_line():
    """``one_error_line(result, *needles)``: exit 2 with one ``error:`` line naming the needles."""
    def check(res, *needles):
        assert res.returncode == 2, (res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        assert "Traceback" not in res.stderr + res.stdout
        for needle in needles:
            assert needle in lines[0], lines[0]
    return check

