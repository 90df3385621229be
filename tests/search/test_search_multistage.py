"""Multi-stage search (Eq. 10): linear budgets, β / α, and spaces shrunk to the last result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cafeslim.bins import random_widths, space_flops
from cafeslim.errors import ConfigError
from cafeslim.search import (FunctionFitness, SubGroupBins, evolution_search, plan_stages,
                             run_stages, shrink_space, stage_betas, stage_budgets)
from cafeslim.supernet import Supernet


def test_budgets_decay_linearly_and_beta_divides_by_alpha():
    b = stage_budgets(1000.0, 400.0, 4)
    assert b == pytest.approx([850.0, 700.0, 550.0, 400.0]) and b[-1] == 400.0
    assert np.allclose(np.diff([1000.0] + b), -150.0)
    assert stage_betas(2.0, 2.0, 3) == [2.0, 1.0, 0.5]
    assert [(s.index, s.budget, s.beta) for s in plan_stages(10.0, 4.0, 1, 1.0, 2.0)] == [(1, 4.0, 1.0)]
    for bad in (lambda: stage_budgets(10, 4, 0), lambda: stage_budgets(10, 11, 2),
                lambda: stage_betas(1.0, 0.0, 2)):
        with pytest.raises(ConfigError):
            bad()


def _subset(spec, parent):
    return all(set(v) <= set(parent.get(g, v)) for g, v in spec.items())


@pytest.mark.parametrize("groups", [1, 4])
def test_shrunk_space_only_keeps_the_previous_result(small_cnn, space_of, groups):
    b = small_cnn(groups=groups)
    space = space_of(b, beta=2.0, min_width=0.25)
    graph, rng = b.graph, np.random.default_rng(0)
    k = (space.num_bins * 0.6).astype(int)
    spec = graph.validate_spec(space.candidates(k)[-1])        # a locally free pattern
    sub = shrink_space(space, spec, b.fm, alpha=2.0)
    assert sub.beta == 1.0 and all(isinstance(g, SubGroupBins) for g in sub.groups)
    assert graph.validate_spec(sub.fixed_spec(sub.num_bins)) == spec   # full sub-space = result
    assert space_flops(sub, b.fm, sub.num_bins)[0] == pytest.approx(b.fm.flops(graph.widths_of(spec)))
    for old, new in zip(space.groups, sub.groups):
        assert new.bounds[-1][1] * new.blocks == len(spec[new.gid])
        assert new.width(new.min_bins) >= min(old.width(old.min_bins), len(spec[new.gid]))
        eq9 = max(1, int(np.floor(sub.beta * sub.meta["max_sensitivity"] / (new.sensitivity * new.blocks) + 0.5)))
        assert new.bin_size == min(eq9, new.channels)                  # Eq. 9 with the new β
    for kk in sub.sample(rng, 30):
        for cand in sub.candidates(kk):
            cand = graph.validate_spec(cand)                  # block-aligned, in range
            assert _subset(cand, spec)
    # the window machinery and the supernet work on the sub-space unchanged
    budget = 0.8 * space_flops(sub, b.fm, sub.num_bins)[0]
    K = random_widths(sub, b.fm, budget, 5, rng)
    f = space_flops(sub, b.fm, K)
    assert np.all((f <= budget) & (f >= 0.97 * budget))
    net = Supernet(b.model, graph, sub).eval()
    net.set_subnet(sub.candidates(K[0])[-1])
    with torch.no_grad():
        assert net(b.x).shape == (1, 4)
    # a second shrink, to a result of the sub-space, nests
    sub2 = shrink_space(sub, sub.candidates(K[0])[-1], b.fm, alpha=2.0)
    for cand in sub2.candidates(sub2.num_bins // 2):
        assert _subset(graph.validate_spec(cand), spec)
    with pytest.raises(ConfigError, match="outside"):
        shrink_space(sub, space.fixed_spec(space.num_bins), b.fm)


def test_run_stages_trains_searches_shrinks_and_resumes(small_cnn, space_of):
    b = small_cnn()
    space = space_of(b, beta=2.0)
    w = np.random.default_rng(5).uniform(0.2, 1.0, len(space.groups))
    target = 0.4 * b.fm.full
    trained, records = [], []

    def train_fn(stage, sp):
        trained.append((stage.index, stage.beta, sp))

    def search_fn(stage, sp):
        fit = FunctionFitness(lambda k: float(w @ (sp.width_matrix(k)[0] / sp.width_matrix(sp.num_bins)[0])),
                              sp, flops_model=b.fm)
        return evolution_search(fit, sp, b.fm, stage.budget, population=8, iterations=3, parents=3,
                                rng=stage.index)

    out = run_stages(train_fn, search_fn, space, b.fm, target, stages=3, alpha=2.0,
                     on_stage=lambda st: records.append(json.loads(json.dumps(st.to_json()))))
    assert [t[:2] for t in trained] == [(1, 2.0), (2, 1.0), (3, 0.5)]
    assert trained[0][2] is space
    assert [o.stage.budget for o in out] == pytest.approx(stage_budgets(b.fm.full, target, 3))
    for prev, cur in zip(out, out[1:]):
        assert b.graph.validate_spec(cur.space.fixed_spec(cur.space.num_bins)) == b.graph.validate_spec(prev.spec)
        assert _subset(b.graph.validate_spec(cur.spec), b.graph.validate_spec(prev.spec))
    final = out[-1]
    assert 0.97 * target <= b.fm.flops(b.graph.widths_of(final.spec)) <= target
    assert records[-1]["stage"] == 3 and records[-1]["flops"] <= target

    # resume after stage 2: stage 3 alone runs, on the same shrunk space, to the same answer
    trained.clear()
    again = run_stages(train_fn, search_fn, space, b.fm, target, stages=3, alpha=2.0, done=records[:2])
    assert [t[0] for t in trained] == [3]
    assert again[-1].spec == final.spec
    with pytest.raises(ConfigError, match="does not match"):
        run_stages(train_fn, search_fn, space, b.fm, 0.3 * b.fm.full, stages=3, done=records[:2])
