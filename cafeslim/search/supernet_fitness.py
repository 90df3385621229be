"""Max-max fitness on a trained supernet: BN recalibration, then the D_val score (Eq. 13).

The score is the task's metric on D_val (:mod:`cafeslim.tasks`: top-1 for classification,
mean IoU for segmentation, mean label accuracy for multi-label); results keep the name
``top1`` for it, as ``search.jsonl`` always has. The recalibration and D_val batches are read
once and replayed from memory when they fit, so every candidate is scored on exactly the same
images.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .fitness import Batches, CachedFitness, FitnessResult, Key


class _Replay:
    """Re-iterable batches: the first ``limit`` batches of a source, kept in memory when small.

    Recalibration and evaluation read the same batches for every candidate; re-running a data
    loader each time (decode, resize) can cost more than the forwards. The first complete pass
    is kept if it fits in ``max_bytes``; otherwise every pass streams from the source again.
    """

    def __init__(self, source: Batches, limit: Optional[int], max_bytes: int) -> None:
        self.source, self.limit, self.max_bytes = source, limit, max_bytes
        self._kept: Optional[List[Any]] = None

    def _open(self) -> Iterator[Any]:
        return iter(self.source() if callable(self.source) else self.source)

    def __iter__(self) -> Iterator[Any]:
        if self._kept is not None:
            yield from self._kept
            return
        got: List[Any] = []
        size, n = 0, 0
        keep = self.max_bytes > 0
        if self.limit is not None and self.limit <= 0:
            return
        for batch in self._open():
            n += 1
            if keep:
                got.append(batch)
                size += _nbytes(batch)
                keep = size <= self.max_bytes
                if not keep:
                    got = []
            last = self.limit is not None and n >= self.limit
            if keep and last:
                self._kept = got  # complete before yielding: the consumer may stop here
            yield batch
            if last:
                return  # never load a batch that will not be used
        if keep:
            self._kept = got


def _nbytes(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.element_size() * batch.nelement()
    if isinstance(batch, (tuple, list)):
        return sum(_nbytes(b) for b in batch)
    if isinstance(batch, Mapping):
        return sum(_nbytes(b) for b in batch.values())
    return 0


def _xy(batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        return batch.get("image", batch.get("images")), batch.get("label", batch.get("target"))
    return batch[0], batch[1]


class Fitness(CachedFitness):
    """Max-max fitness of width vectors on a trained supernet (Eq. 13).

    For every candidate of ``k``: recalibrate BatchNorm on ``recal_n`` training batches
    (:func:`~cafeslim.supernet.recalibrate_bn`), then measure the task's metric on D_val in eval
    mode under ``torch.inference_mode``. The fitness is the best candidate's score (``top1``
    of the result, whatever the metric) and its IndexSpec is the result. The same batches are used for every candidate (kept in memory when they fit in
    ``cache_mb``), so scores are deterministic and comparable.

    Args:
        supernet: a :class:`~cafeslim.supernet.Supernet` (or a DDP wrapper of one).
        space: its :class:`~cafeslim.bins.SearchSpace`.
        recal_batches: training batches for recalibration: a list, a re-iterable (data
            loader) or a callable returning a fresh iterable. Use a fixed order (``Data.calib``).
        val_batches: D_val batches ``(images, labels)``, same forms.
        recal_n: batches per recalibration (paper/AutoSlim: 20).
        eval_n: D_val batches per evaluation (None: all).
        offset: r of Eq. 5 (default: the space's; 0 scores the fixed pattern only).
        device: where images go (default: the supernet's device).
        flops_model: prices the winning spec (:class:`~cafeslim.flops.FlopsModel`).
        extra_candidates: see :class:`CachedFitness`.
        cache_mb: keep recalibration and D_val batches in memory up to this size each
            (0: always re-read them).
        channels_last: feed images in channels-last memory format.
        task: the :mod:`cafeslim.tasks` task (or its name) whose metric scores a candidate
            (None: classification's top-1).

    Example:
        >>> fit = Fitness(supernet, space, data.calib, data.val, recal_n=20, flops_model=fm)  # doctest: +SKIP
        >>> res = fit(space.num_bins // 2)                                    # doctest: +SKIP
        >>> len(res.candidate_top1s), res is fit(space.num_bins // 2)         # doctest: +SKIP
        (3, True)
    """

    def __init__(self, supernet: torch.nn.Module, space: Any, recal_batches: Batches, val_batches: Batches,
                 recal_n: int = 20, eval_n: Optional[int] = None, offset: Optional[int] = None,
                 device: Union[None, str, torch.device] = None, *, flops_model: Any = None,
                 extra_candidates: int = 0, cache_mb: float = 512, channels_last: bool = False,
                 task: Any = None) -> None:
        from ..supernet.supernet import unwrap
        from ..tasks import get_task

        super().__init__(space, offset, extra_candidates, flops_model)
        if recal_n < 1:
            raise ConfigError(f"recal_n must be at least 1, got {recal_n}")
        if eval_n is not None and eval_n < 1:
            raise ConfigError(f"eval_n must be at least 1 or None, got {eval_n}")
        self.supernet = supernet
        self.net = unwrap(supernet)
        self.task = get_task(task)
        self.recal_n, self.eval_n = int(recal_n), eval_n
        self.device = torch.device(device) if device is not None else self.net._device()
        self.channels_last = bool(channels_last)
        max_bytes = int(cache_mb * 2**20)
        self.recal = _Replay(recal_batches, self.recal_n, max_bytes)
        self.val = _Replay(val_batches, eval_n, max_bytes)

    def _evaluate(self, k: Key) -> FitnessResult:
        from ..supernet.batched import record_time
        from ..supernet.bn import _batch_size

        specs = self.candidate_specs(k)
        t0 = time.perf_counter()
        scored = self._score_batched(specs)
        batched = scored is not None
        if scored is None:
            scored = [self._score(spec) for spec in specs]
        if len(specs) > 1:
            record_time(self.net, "score", _batch_size(self.recal), batched,
                        (time.perf_counter() - t0) / len(specs))
        tops = [t for t, _, _ in scored]
        recal_s = sum(r for _, r, _ in scored)
        eval_s = sum(e for _, _, e in scored)
        best = int(np.argmax(tops))  # first maximum: ties go to the fixed pattern
        return FitnessResult(k, tops[best], specs[best], tuple(tops), self.spec_flops(specs[best]),
                             best, recal_s, eval_s)

    def score_spec(self, spec: Optional[Mapping[int, Sequence[int]]]) -> float:
        """D_val score of one IndexSpec after BN recalibration (not cached).

        The supernet keeps the recalibrated statistics of ``spec`` afterwards, so an export
        right after it uses the very statistics that were scored.

        Example:
            >>> fit.score_spec(result.best_spec) == result.top1                  # doctest: +SKIP
            True
        """
        return self._score(spec)[0]

    def _score(self, spec: Optional[Mapping[int, Sequence[int]]]) -> Tuple[float, float, float]:
        from ..supernet.bn import recalibrate_bn

        t0 = time.perf_counter()
        self.net.prepare(spec)  # gather plan: counted apart, it is paid once per spec
        t1 = time.perf_counter()
        counter = [0]
        recalibrate_bn(self.supernet, spec, _counted(self.recal, counter), max_batches=self.recal_n,
                       channels_last=self.channels_last)
        t2 = time.perf_counter()
        top1, n = self._top1(spec)
        t3 = time.perf_counter()
        st = self.stats
        st.candidates += 1
        st.prepare_s += t1 - t0
        st.recal_s += t2 - t1
        st.eval_s += t3 - t2
        st.recal_images += counter[0]
        st.eval_images += n
        return top1, t2 - t1 + (t1 - t0), t3 - t2

    def _score_batched(self, specs: Sequence[Any]) -> Optional[List[Tuple[float, float, float]]]:
        """Scores of a width's candidates, recalibrated and evaluated together, or None.

        None when :mod:`cafeslim.supernet.batched` does not apply (then :meth:`_score` runs
        each candidate). Time is split evenly between the candidates.
        """
        from ..supernet.batched import chunk_size, decided
        from ..supernet.bn import _batch_size, recalibrate_bn_many

        keys = [self.net.prepare(s) for s in specs]
        size, k = _batch_size(self.recal), len(specs)
        if k < 2 or not all(keys) or chunk_size(self.net, k, size, "score") < 2:
            return None
        counter = [0]
        with decided(self.net):  # recalibration and D_val follow this one decision
            t0 = time.perf_counter()
            recalibrate_bn_many(self.supernet, specs, _Sized(self.recal, counter, size),
                                max_batches=self.recal_n, channels_last=self.channels_last)
            t1 = time.perf_counter()
            results = self._top1_many(specs)
            t2 = time.perf_counter()
            passes = -(-k // chunk_size(self.net, k, size, "score"))
        st = self.stats
        st.candidates += k
        st.recal_s += t1 - t0
        st.eval_s += t2 - t1
        # Counted per candidate, as the sequential path does: the batches were read once per
        # chunk of candidates.
        st.recal_images += counter[0] * k // passes
        st.eval_images += sum(n for _, n in results)
        return [(top1, (t1 - t0) / k, (t2 - t1) / k) for top1, _ in results]

    def _top1_many(self, specs: Sequence[Any]) -> List[Tuple[float, int]]:
        """D_val score (the task's metric) of several recalibrated specs, batched where possible."""
        from ..supernet.batched import candidate_outputs, chunk_size, chunks

        net = self.net
        keys = [net.prepare(s) for s in specs]
        stats = [net.bn_stats(s) for s in specs]
        modes = [(m, m.training) for m in net.modules()]
        previous = net.spec
        meters = [self.task.meter() for _ in specs]
        try:
            net.eval()
            with torch.inference_mode():
                for batch in self.val:
                    x, y = _xy(batch)
                    x = x.to(self.device, non_blocking=True)
                    if self.channels_last and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    for part in chunks(list(range(len(specs))), chunk_size(net, len(specs), x.shape[0], "score")):
                        outs = candidate_outputs(net, [keys[i] for i in part], x,
                                                 [stats[i] for i in part]) if len(part) > 1 else None
                        if outs is None:
                            outs = []
                            for i in part:
                                net.set_subnet(specs[i])
                                outs.append(net(x))
                        for i, out in zip(part, outs):
                            meters[i].update(out, y)
        finally:
            net.set_subnet(previous)
            for m, mode in modes:
                m.training = mode
        total = meters[0].count if meters else 0
        if total == 0:
            raise DataError("the D_val loader is empty: nothing to evaluate the search on")
        return [(m.compute()[self.task.metric], total) for m in meters]

    def _top1(self, spec: Optional[Mapping[int, Sequence[int]]]) -> Tuple[float, int]:
        return self._top1_many([spec])[0]  # one spec: the sequential forward

def _counted(batches: Iterable[Any], counter: List[int]) -> Iterator[Any]:
    """Pass batches through, adding their image counts to ``counter[0]``."""
    for b in batches:
        x = b if isinstance(b, torch.Tensor) else (_xy(b)[0])
        counter[0] += int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() else 0
        yield b


class _Sized:
    """Re-iterable view of batches that tells their batch size (for the batching cap)."""

    def __init__(self, batches: Any, counter: List[int], batch_size: int) -> None:
        self.batches, self.counter, self.batch_size = batches, counter, batch_size

    def __iter__(self) -> Iterator[Any]:
        return _counted(self.batches, self.counter)


__all__ = ["Fitness"]
