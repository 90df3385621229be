"""Groups and FLOPs of ~25 varied models, to compare before/after a refactor of the op rules.

Prints one JSON line per model: (searchable, fixed) group counts, the fixed-reason histogram,
fvcore's and FlopsModel's full FLOPs, FlopsModel at two random legal width vectors and digests
of the groups and op records. Run it before and after a change and diff the outputs:

    python benchmarks/registry_parity.py > before.jsonl   # ... change ...
    python benchmarks/registry_parity.py > after.jsonl && diff before.jsonl after.jsonl
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
import time

import numpy as np
import torch

MODELS = [
    ("tv:resnet50", None), ("tv:mobilenet_v2", None), ("tv:googlenet", None),
    ("tv:densenet121", 128), ("tv:regnet_x_400mf", None), ("tv:shufflenet_v2_x1_0", None),
    ("tv:vit_b_16", None), ("tv:swin_t", 128), ("tv:convnext_tiny", 128), ("tv:maxvit_t", None),
    ("tv:efficientnet_b0", None), ("tv:alexnet", None),
    ("timm:test_resnet", None), ("timm:test_efficientnet", None), ("timm:test_vit", None),
    ("timm:test_convnext", None), ("timm:resnet50d", 128), ("timm:res2net50_26w_4s", 128),
    ("timm:ghostnet_100", 128), ("timm:nfnet_l0", 128), ("timm:poolformer_s12", 128),
    ("timm:coat_lite_tiny", None), ("timm:mobilevit_xxs", None), ("timm:regnetz_b16", 128),
    ("timm:cspdarknet53", 128),
]


def _digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def one(name: str, size) -> dict:
    from cafeslim.flops import FlopsModel
    from cafeslim.graph import analyze
    from cafeslim.models import create

    torch.manual_seed(0)
    info = create(name)
    model = info.model.eval()
    shape = info.input_size if size is None else (info.input_size[0], size, size)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    g = analyze(model, x, source=name)
    fm = FlopsModel(g, model, x)
    rng = np.random.default_rng(0)
    full = g.width_vector({})
    blocks = np.array([gr.blocks for gr in g.searchable], dtype=float)
    W = np.ceil(rng.uniform(0.05, 1.0, (2, len(full))) * (full / np.maximum(blocks, 1))) * blocks
    reasons = collections.Counter(r for gr in g.groups if not gr.searchable for r in gr.reasons)
    groups = [(gr.channels, gr.searchable, gr.blocks, sorted(gr.reasons),
               [list(m.__dict__.values()) for m in gr.members]) for gr in g.groups]
    # Kinds as earlier versions wrote them ("other:NAME"), so digests compare across versions.
    legacy = lambda o: f"other:{o.name}" if str(o.kind) == "other" else str(o.kind)
    ops = [(o.node, legacy(o), o.module, repr(o.attrs)) for o in g.ops]
    return {"model": name, "input": list(shape), "searchable": len(g.searchable),
            "fixed": len(g.groups) - len(g.searchable), "reasons": dict(sorted(reasons.items())),
            "fvcore": fm.fvcore_full, "full": fm.full, "random": [float(v) for v in fm.evaluate(W)],
            "groups_digest": _digest(groups), "ops_digest": _digest(ops), "_s": round(time.perf_counter() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="subset of model names")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name, size in MODELS:
        if args.only and name not in args.only:
            continue
        try:
            row = one(name, size)
        except Exception as exc:  # report and go on: a comparison wants every line
            row = {"model": name, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(row), flush=True)
        print(name, row.get("_s", "error"), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
