"""Evolutionary and random search: the window, improvement, best-of-samples, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cafeslim.bins import space_flops
from cafeslim.errors import ConfigError
from cafeslim.search import (EvolutionSearcher, FunctionFitness, RandomSearcher, Window, crossover,
                             evolution_search, mutate, random_search, search_budgets)

LOW = 0.97


@pytest.fixture(scope="module")
def setup(small_cnn, space_of):
    b = small_cnn()
    space = space_of(b, beta=0.5)
    w = np.random.default_rng(3).uniform(0.2, 1.0, len(space.groups))
    # A known objective: weighted kept fraction per group. Under a FLOPs window the optimum
    # trades the cheap, valuable groups against the rest; random vectors are far from it.
    score = lambda k: float(w @ (k / space.num_bins))          # noqa: E731
    return b, space, score


def _inside(space, fm, K, budget):
    f = space_flops(space, fm, np.asarray(K))
    return np.all((f >= LOW * budget - 1e-6) & (f <= budget + 1e-6))


def test_every_individual_is_inside_the_window_and_evolution_improves(setup):
    b, space, score = setup
    budget = 0.5 * b.fm.full
    fit = FunctionFitness(score, space, flops_model=b.fm)
    seen = []
    res = evolution_search(fit, space, b.fm, budget, population=16, iterations=8, parents=4,
                           rng=0, on_eval=seen.append)
    assert seen == res.history and len(res.history) == len({tuple(r["k"]) for r in res.history})
    assert _inside(space, b.fm, [r["k"] for r in res.history], budget)
    assert all(r["flops"] <= budget for r in res.history)
    gen0 = max(r["top1"] for r in res.history if r["generation"] == 0)
    assert res.best.top1 > gen0
    assert res.best.top1 == max(r["top1"] for r in res.history)
    assert res.best.best_spec == space.fixed_spec(res.best_k)
    assert {r["generation"] for r in res.history} == set(range(8))


def test_random_search_returns_the_best_of_its_samples(setup):
    b, space, score = setup
    budget = 0.4 * b.fm.full
    fit = FunctionFitness(score, space, flops_model=b.fm)
    res = random_search(fit, space, b.fm, budget, n=60, chunk=25, rng=1)
    ks = np.array(res.state["samples"])
    assert ks.shape == (60, len(space.groups)) and _inside(space, b.fm, ks, budget)
    assert res.best.top1 == max(score(k) for k in ks)
    assert res.state["finished"] and res.state["generation"] == 3
    assert res.to_json(space)["widths"] and res.to_json()["k"] == list(res.best_k)


@pytest.mark.parametrize("kind", ["evolution", "random"])
def test_resume_matches_an_uninterrupted_run(setup, kind):
    b, space, score = setup
    budget = 0.6 * b.fm.full
    cls = {"evolution": EvolutionSearcher, "random": RandomSearcher}[kind]
    kw = dict(population=10, iterations=6, parents=3) if kind == "evolution" else dict(n=50, chunk=10)
    full = cls(FunctionFitness(score, space), space, b.fm, budget, rng=7, **kw).run()

    states = []
    cls(FunctionFitness(score, space), space, b.fm, budget, rng=7, **kw).run(
        on_state=lambda s: states.append(json.dumps(s)))       # JSON round trip, as on disk
    state = json.loads(states[2])                              # "killed" after generation 3
    assert state["generation"] == 3 and not state["finished"]
    fresh = FunctionFitness(score, space)
    resumed = cls(fresh, space, b.fm, budget, rng=12345, state=state, **kw)
    assert len(fresh.cache) == len(state["history"])           # the history refills the cache
    out = resumed.run()
    assert out.best_k == full.best_k and out.best.top1 == full.best.top1
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("eval_s", "recal_s", "cached")} for r in h]  # noqa: E731
    assert strip(out.history) == strip(full.history)
    assert fresh.stats.widths == len(full.history) - len(state["history"])
    with pytest.raises(ConfigError, match="other settings"):
        cls(fresh, space, b.fm, 0.5 * budget, state=state, **kw)


def test_search_budgets_share_the_cache_and_resume(setup):
    b, space, score = setup
    budgets = [0.45 * b.fm.full, 0.6 * b.fm.full]
    fit = FunctionFitness(score, space, flops_model=b.fm)
    saved = []
    res = search_budgets(fit, space, b.fm, budgets, "evolution", seed=3, population=8,
                         iterations=3, parents=3, on_state=lambda st: saved.append(json.loads(json.dumps(st))))
    assert [r.budget for r in res] == budgets
    for r in res:
        assert _inside(space, b.fm, [h["k"] for h in r.history], r.budget)
    assert fit.stats.widths == len(fit.cache) == sum(len(r.history) for r in res)
    # interrupted after the first budget's second generation
    mid = saved[1]
    assert mid[0]["generation"] == 2 and mid[1] is None
    fit2 = FunctionFitness(score, space, flops_model=b.fm)
    again = search_budgets(fit2, space, b.fm, budgets, "evolution", seed=3, population=8,
                           iterations=3, parents=3, states=mid)
    assert [r.best_k for r in again] == [r.best_k for r in res]
    with pytest.raises(ConfigError, match="unknown searcher"):
        search_budgets(fit, space, b.fm, budgets, "annealing")


def test_operators_work_on_bins_and_repair_lands_in_the_window(setup):
    b, space, _ = setup
    rng = np.random.default_rng(0)
    win = Window(space, b.fm, 0.5 * b.fm.full, LOW)
    parents = win.sample(4, rng)
    kids = mutate(parents, 200, 0.3, space, rng)
    assert kids.shape == (200, len(space.groups))
    assert np.all((kids >= space.min_bins) & (kids <= space.num_bins))
    changed = (kids != parents[:, None, :]).all(0).any(1)   # differs from every parent somewhere
    assert changed.mean() > 0.5
    mixed = crossover(parents, 200, rng)
    assert all(any((m[g] == p[g]) for p in parents) for m in mixed for g in range(len(m)))
    fixed, ok = win.repair(np.tile(space.num_bins, (20, 1)), rng)     # all start at full width
    assert ok.all() and win.valid(fixed).all()
    fixed, ok = win.repair(np.tile(space.min_bins, (20, 1)), rng)     # and at the smallest
    assert win.valid(fixed[ok]).all() and ok.mean() > 0.9
    seen = set()
    out = win.breed(lambda m: mutate(parents, m, 0.1, space, rng), 30, rng, seen)
    assert win.valid(out).all() and len(seen) == 30 == len({tuple(r) for r in out})
