"""The candidate architectures of a search: named prune presets, or every size combination near a target count.

Minitron ranks candidate architectures by a short distillation each; this module decides WHICH candidates, on the
submit side, before any weights are read. Given `search.target_params` it walks the grid of layer counts, hidden,
FFN and head sizes allowed by the `search.*_divisor` and `search.max_*_pruning` settings, keeps the sizes whose
parameter count (without lm_head, the reports' convention) lies within `search.tolerance` of the target, and thins
them to `search.max_candidates`: the closest to the target of each kind (depth, ffn, hybrid, hidden, heads), then
the most different from those already kept, so that a handful of short runs covers the space.

Counts are exact, the same as `count_on_meta` of the pruned config, yet the grid of a 50-layer 11B model has
thousands of points and a meta model of each would take minutes. For fixed hidden size and heads, the count is
affine in the layer count and, per layer, affine in the FFN size: three small meta models (1 layer, 2 layers,
1 wider layer) give its coefficients, and the kept candidates are then counted again in full, so a layer that
broke this structure (a new architecture) fails loudly instead of skewing the counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from compactlm.config import check_run_name
from compactlm.errors import ConfigError
from compactlm.model.params import count_on_meta, pruned_hf_config
from compactlm.prune.schema import EXPORT_TO_HF, ExportConfig
from compactlm.search.schema import SearchCandidate, SearchConfig

# export_config key, its letter in a candidate's name, its kind when it is the only size changed; in name order
DIMENSIONS = (
    ("num_layers", "L", "depth"),
    ("hidden_size", "H", "hidden"),
    ("ffn_hidden_size", "F", "ffn"),
    ("num_attention_heads", "A", "heads"),
)
# Which kinds get a guaranteed place first when there are more kinds than search.max_candidates
KIND_PREFERENCE = ("depth", "ffn", "hybrid", "hidden", "heads")
# (1 - 0.45) * 40 is 22.000000000000004: lower bounds are rounded up after forgiving this much
_EPS = 1e-9


def target_count(target_params: float, teacher_params: int) -> int:
    """Parameters (without lm_head) to keep: `target_params` <= 1 is a fraction of `teacher_params`, above 1 a count
    (config.check_target_params refuses the values between, such as 1.5)."""
    return round(target_params * teacher_params) if target_params <= 1 else round(target_params)


def preset_candidate(name: str, export_config: dict[str, int], base_hf_config, teacher_params: int) -> SearchCandidate:
    """The candidate of the prune preset `name` with ModelOpt `export_config` sizes (None: unchanged), counted in full.

    Raises ConfigError when the preset keeps every size of the model: it would rank the teacher against itself.
    """
    check_run_name(name, "search.candidates")
    export = {k: int(v) for k, v in export_config.items() if v is not None}
    changed = _changed(export, _teacher_sizes(base_hf_config))
    if not changed:
        raise ConfigError(
            f"search.candidates: prune preset {name} keeps every size of the model "
            f"(export_config {export}); list presets that prune something"
        )
    params = count_on_meta(pruned_hf_config(base_hf_config, export))["without_lm_head"]
    return _candidate(name, export, _kind(changed), params, teacher_params)


def enumerate_candidates(base_hf_config, search: SearchConfig) -> list[SearchCandidate]:
    """At most `search.max_candidates` diverse architectures within `search.tolerance` of `search.target_params`,
    by parameter count (without lm_head) descending, then name. Raises ConfigError when none fits."""
    if search.target_params is None:
        raise ConfigError(
            "search.target_params is null and search.candidates is empty; set search.target_params "
            "(0.67 or 7.35e9) or list prune presets in search.candidates"
        )
    teacher = _teacher_sizes(base_hf_config)
    teacher_params = count_on_meta(base_hf_config)["without_lm_head"]
    target = target_count(search.target_params, teacher_params)
    if target > teacher_params:
        raise ConfigError(
            f"search.target_params={search.target_params:g} asks for {target:,} parameters without "
            f"lm_head, but the teacher has only {teacher_params:,}: a search prunes, so ask for fewer "
            "(a fraction below 1, e.g. 0.67, or a smaller count)"
        )
    points = _grid(base_hf_config, search, teacher)
    fits = [p for p in points if abs(p.params - target) <= search.tolerance * target]
    if not fits:
        raise ConfigError(_no_fit(search, target, teacher_params, points))
    chosen = _thin(fits, teacher, target, search.max_candidates)
    for point in chosen:  # the affine counts, checked against a full meta model of each candidate kept
        full = count_on_meta(pruned_hf_config(base_hf_config, point.sizes))["without_lm_head"]
        if full != point.params:
            raise RuntimeError(
                f"parameter count of {point.sizes} is {full} on the meta device but {point.params} "
                f"by the per-layer formula: {base_hf_config.model_type} layers are not affine in "
                "the FFN size, compactlm.search.space needs a full count per grid point for it"
            )
    candidates = []
    for point in chosen:
        changed = _changed(point.sizes, teacher)
        candidates.append(_candidate(_name(changed), changed, _kind(changed), point.params, teacher_params))
    return sorted(candidates, key=lambda c: (-c.params, c.name))


# ------------------------------------------------------------------------------------------------ the grid
@dataclass(frozen=True)
class _Point:
    sizes: dict[str, int]
    """Every export_config key, changed or not."""
    params: int


@dataclass(frozen=True)
class _AffineCount:
    """Parameters without lm_head at one hidden size and head count: base + layers x (per_layer + per_ffn x ffn)."""

    base: int
    per_layer: int
    per_ffn: int

    def __call__(self, layers: int, ffn: int) -> int:
        return self.base + layers * (self.per_layer + self.per_ffn * ffn)


def _affine_count(base_hf_config, hidden: int, heads: int) -> _AffineCount:
    ffn = base_hf_config.intermediate_size

    def count(layers: int, ffn_size: int) -> int:
        sizes = {"hidden_size": hidden, "num_attention_heads": heads, "num_layers": layers, "ffn_hidden_size": ffn_size}
        return count_on_meta(pruned_hf_config(base_hf_config, sizes))["without_lm_head"]

    one, two, wider = count(1, ffn), count(2, ffn), count(1, ffn + 1)
    layer, per_ffn = two - one, wider - one
    return _AffineCount(base=one - layer, per_layer=layer - per_ffn * ffn, per_ffn=per_ffn)


def _options(full: int, divisor: int, max_pruning: float) -> list[int]:
    """Multiples of `divisor` from (1 - max_pruning) x `full` up to `full`, and `full` itself."""
    low = max(math.ceil((1 - max_pruning) * full - _EPS), 1)
    first = -(-low // divisor) * divisor
    return sorted({*range(first, full + 1, divisor), full})


def _grid(base_hf_config, search: SearchConfig, teacher: dict[str, int]) -> list[_Point]:
    """Every allowed combination of sizes but the teacher's own, with its exact count."""
    kv = getattr(base_hf_config, "num_key_value_heads", None) or teacher["num_attention_heads"]
    layers = _options(teacher["num_layers"], search.num_layers_divisor, search.max_depth_pruning)
    hiddens = _options(teacher["hidden_size"], search.hidden_size_divisor, search.max_width_pruning)
    ffns = _options(teacher["ffn_hidden_size"], search.ffn_hidden_size_divisor, search.max_width_pruning)
    heads = (
        _options(teacher["num_attention_heads"], kv, search.max_width_pruning)
        if search.prune_heads
        else [teacher["num_attention_heads"]]
    )
    points = []
    for hidden in hiddens:
        for head in heads:
            if hidden % head:
                continue  # transformers refuses to save such a config (validate_architecture), head_dim pinned or not
            count = _affine_count(base_hf_config, hidden, head)
            for layer in layers:
                for ffn in ffns:
                    sizes = {
                        "num_layers": layer,
                        "hidden_size": hidden,
                        "ffn_hidden_size": ffn,
                        "num_attention_heads": head,
                    }
                    if sizes != teacher:
                        points.append(_Point(sizes, count(layer, ffn)))
    return points


def _no_fit(search: SearchConfig, target: int, teacher_params: int, points: list[_Point]) -> str:
    what = (
        f"search.target_params={search.target_params} asks for {target:,} parameters without lm_head "
        f"(the teacher has {teacher_params:,})"
    )
    if not points:
        return (
            f"{what}, but search.max_depth_pruning={search.max_depth_pruning} and search.max_width_pruning="
            f"{search.max_width_pruning} on the search.*_divisor settings allow no pruned size at all; raise them"
        )
    nearest = min(points, key=lambda p: abs(p.params - target)).params
    return (
        f"{what}, but no candidate is within search.tolerance={search.tolerance} of it: the nearest has "
        f"{nearest:,} ({nearest / target - 1:+.1%}); widen search.tolerance, lower the search.*_divisor settings "
        "or raise search.max_depth_pruning / search.max_width_pruning"
    )


# ------------------------------------------------------------------------------------------------ thinning
def _thin(fits: list[_Point], teacher: dict[str, int], target: int, max_candidates: int) -> list[_Point]:
    """The closest to `target` of each kind (KIND_PREFERENCE order), then greedily the point farthest from every
    point chosen so far, in sizes relative to the teacher's; ties go to the closer to the target, then by name."""

    def closeness(p: _Point) -> tuple[int, str]:
        return abs(p.params - target), _name(_changed(p.sizes, teacher))

    def position(p: _Point) -> tuple[float, ...]:
        return tuple(p.sizes[k] / teacher[k] for k, _, _ in DIMENSIONS)

    chosen = []
    for kind in KIND_PREFERENCE:
        of_kind = [p for p in fits if _kind(_changed(p.sizes, teacher)) == kind]
        if of_kind and len(chosen) < max_candidates:
            chosen.append(min(of_kind, key=closeness))

    def spread(p: _Point) -> tuple[float, int, str]:  # rounded: mirror-image points tie, then closeness decides
        nearest = min(math.dist(position(p), position(c)) for c in chosen)
        return (-round(nearest, 9), *closeness(p))

    rest = [p for p in fits if p not in chosen]
    while rest and len(chosen) < max_candidates:
        best = min(rest, key=spread)
        chosen.append(best)
        rest.remove(best)
    return chosen


# ------------------------------------------------------------------------------------------------ naming
def _teacher_sizes(hf_config) -> dict[str, int]:
    return {key: int(getattr(hf_config, EXPORT_TO_HF[key])) for key, _, _ in DIMENSIONS}


def _changed(sizes: dict[str, int], teacher: dict[str, int]) -> dict[str, int]:
    """The sizes that differ from the teacher's, in DIMENSIONS order."""
    return {key: sizes[key] for key, _, _ in DIMENSIONS if key in sizes and sizes[key] != teacher[key]}


def _kind(changed: dict[str, int]) -> str:
    if len(changed) == 1:
        return next(kind for key, _, kind in DIMENSIONS if key in changed)
    return "hybrid"


def _name(changed: dict[str, int]) -> str:
    """`L24_F960`: a letter and the new size of each changed dimension, in the order L, H, F, A."""
    return "_".join(f"{letter}{changed[key]}" for key, letter, _ in DIMENSIONS if key in changed)


def _candidate(name: str, export: dict[str, int], kind: str, params: int, teacher_params: int) -> SearchCandidate:
    check_run_name(name, "search.resolved.name")
    return SearchCandidate(
        name=name, export_config=ExportConfig(**export), kind=kind, params=params, change=params / teacher_params - 1.0
    )
