"""How fast `recipe=search` enumerates candidates, against counting every grid point with its own meta model.

    python benchmarks/search_enumeration.py                       # Bielik-11B-v3, target 7.35e9, divisors 256 / 512
    python benchmarks/search_enumeration.py --model smollm2_135m --target 0.67

The enumeration (compactlm.search.space) counts parameters exactly from three small meta models per (hidden,
heads) pair, using that the count is affine in the layer count and the FFN size; the obvious way builds a meta
model of every grid point. Both are timed in this run: the enumeration in full, the obvious way on a sample of
grid points, extrapolated to the grid. Prints both and their ratio, and checks the kept candidates' counts
against full meta models.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from omegaconf import OmegaConf

from compactlm.model.params import count_on_meta, hf_config_from_shape, pruned_hf_config
from compactlm.search.schema import SearchConfig
from compactlm.search.space import enumerate_candidates

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bielik_11b_v3", help="a conf/model/ name with a shape")
    parser.add_argument("--target", type=float, default=7.35e9, help="search.target_params")
    parser.add_argument("--hidden-divisor", type=int, default=256)
    parser.add_argument("--ffn-divisor", type=int, default=512)
    parser.add_argument("--sample", type=int, default=20, help="grid points counted one meta model each")
    args = parser.parse_args()
    shape = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / f"{args.model}.yaml"))["shape"]
    base = hf_config_from_shape(shape)
    count_on_meta(pruned_hf_config(base, {"num_layers": 1}))  # the model classes imported before any timing
    search = SearchConfig(
        target_params=args.target, hidden_size_divisor=args.hidden_divisor, ffn_hidden_size_divisor=args.ffn_divisor
    )

    t0 = time.perf_counter()
    candidates = enumerate_candidates(base, search)
    enumerate_s = time.perf_counter() - t0

    layers = range(
        max(1, round(base.num_hidden_layers * (1 - search.max_depth_pruning))),
        base.num_hidden_layers + 1,
        search.num_layers_divisor,
    )
    ffns = range(args.ffn_divisor, base.intermediate_size + 1, args.ffn_divisor)
    hiddens = range(args.hidden_divisor, base.hidden_size + 1, args.hidden_divisor)
    grid = len(layers) * len(ffns) * len(hiddens)
    t0 = time.perf_counter()
    for i in range(args.sample):
        count_on_meta(pruned_hf_config(base, {"num_layers": layers[i % len(layers)], "ffn_hidden_size": ffns[-1]}))
    per_point = (time.perf_counter() - t0) / args.sample
    exact = all(
        c.params == count_on_meta(pruned_hf_config(base, c.export_config.known()))["without_lm_head"]
        for c in candidates
    )

    print(
        f"model={args.model}, target {args.target:g}: {len(candidates)} candidates "
        f"({', '.join(c.name for c in candidates)})"
    )
    print(f"  enumeration (affine counts):            {enumerate_s:8.2f} s")
    print(
        f"  one meta model per grid point (est.):   {per_point * grid:8.2f} s  "
        f"({grid} points x {per_point * 1000:.0f} ms, heads not even varied)"
    )
    print(f"  ratio:                                   {per_point * grid / enumerate_s:8.1f}x")
    print(f"  kept candidates' counts equal full meta counts: {exact}")


if __name__ == "__main__":
    main()
