"""How a dataset's arrays line up, and the window a sample reads in each.

Dimensions are matched by name across arrays (``dimension_names``, xarray's
``_ARRAY_DIMENSIONS``): the dataset's dimensions are the union of its arrays', each array
keeping its own order. Along each dimension, a sample reads from every array that has it:

- a **crop**: ``c`` consecutive indices from the sample's origin;
- **steps**: the indices ``origin + s`` for each step ``s`` (``[-1, 0, 4]``: t-1, t, t+4);
- a **selection**: fixed indices, the same for every sample (``[3, 7, 12]`` of ``level``);
- otherwise the dimension **whole**.

The sampler draws the *start* of each dimension's window, the first index any array reads
there; a sample's origin (its ``anchor``: what ``return_origins`` gives and ``origins=`` and
``valid=`` name) is that start less the lowest step (0 without steps).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lsio_torch._sources import Source, as_int, crop_shape, joint_grid

#: Per array dimension, the ``(offset, length)`` runs a sample reads.
Runs = tuple[tuple[tuple[int, int], ...], ...]


@dataclass(frozen=True)
class ArrayLayout:
    """Where one array's dimensions are among the dataset's, and what a sample reads of it."""

    axes: tuple[int, ...]  # per array dimension, its place in the dataset's dimensions
    runs: Runs  # per array dimension, in the array's own units, past the array's origin
    follows: tuple[bool, ...]  # per array dimension: its origin is the sample's (else 0)
    scale: tuple[int, ...]

    @property
    def out_shape(self) -> tuple[int, ...]:
        """One sample's output: the runs of each dimension one after the other."""
        return tuple(sum(n for _, n in dim) for dim in self.runs)

    def origins(self, starts: list[list[int]]) -> list[list[int]]:
        """The array's origins for samples whose windows start at ``starts`` (dataset units)."""
        picks = list(zip(self.axes, self.scale, self.follows, strict=True))
        return [[w[j] // f if follows else 0 for j, f, follows in picks] for w in starts]


@dataclass(frozen=True)
class Layout:
    """The dataset's dimensions and every array's window."""

    dims: tuple[str, ...]
    shape: tuple[int, ...]  # per dimension, its length (on the finest grid)
    step: tuple[int, ...]  # window starts are multiples of these (arrays on coarser grids)
    extent: tuple[int, ...]  # how far a window reaches from its start (the sampler's crop)
    low: tuple[int, ...]  # a sample's anchor is its window's start less this
    crop: tuple[int, ...]  # per dimension, the output's extent (the widest of the arrays')
    arrays: dict[str | None, ArrayLayout]

    def anchors(self, starts: list[list[int]]) -> list[list[int]]:
        return [[w - lo for w, lo in zip(row, self.low, strict=True)] for row in starts]

    def starts(self, anchors: list[list[int]]) -> list[list[int]]:
        lead = len(anchors[0]) if anchors else 0
        return [[a + lo for a, lo in zip(row, self.low[:lead], strict=True)] for row in anchors]


def merged_dims(names: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The union of the arrays' dimension names: in the first array's order, each name new in
    a later array placed right after the name before it there (``(time, lat, lon)`` and
    ``(time, level, lat, lon)`` give ``(time, level, lat, lon)``)."""
    dims: list[str] = []
    for own in names:
        at = -1
        for name in own:
            if name in dims:
                at = dims.index(name)
            else:
                at += 1
                dims.insert(at, name)
    return tuple(dims)


def _names(source: Source) -> tuple[str, ...]:
    names = source.array.dimension_names
    if not names or any(n is None for n in names):
        raise ValueError(
            f"{source.label}: the array has no dimension names {names}; "
            "give crop as a tuple (arrays of one rank) or name its dimensions"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{source.label}: the array names a dimension twice: {names}")
    return tuple(names)


def _indices(values: Any, what: str) -> tuple[int, ...]:
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        try:
            values = list(values)
        except TypeError:
            raise ValueError(f"{what} must be a list of integers, got {values!r}") from None
    out = tuple(as_int(v, what) for v in values)
    if not out:
        raise ValueError(f"{what} must name at least one index")
    return out


def _per_array(
    name: str, value: Mapping[str, Any] | None, keys: list[str | None], dims: tuple[str, ...]
) -> dict[str | None, dict[str, tuple[int, ...]]]:
    """``steps``/``select``: ``{dim: [...]}`` for every array, or ``{array: {dim: [...]}}``."""
    if value is None:
        return {k: {} for k in keys}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping {{dimension: [indices]}}, got {value!r}")
    per_array = bool(value) and all(isinstance(v, Mapping) for v in value.values())
    if per_array:
        unknown = set(value) - set(keys)
        if unknown:
            raise ValueError(f"{name} names {sorted(unknown)}, not among the arrays {keys}")
        given = {k: value.get(k) or {} for k in keys}
    else:
        given = dict.fromkeys(keys, value)
    out = {}
    for k, dims_given in given.items():
        unknown = set(dims_given) - set(dims)
        if unknown:
            raise ValueError(
                f"{name} names {sorted(unknown)}, not dimensions of the arrays {list(dims)}"
            )
        out[k] = {d: _indices(v, f"{name}[{d!r}]") for d, v in dims_given.items()}
    return out


def build_layout(
    sources: Sequence[Source],
    crop: Sequence[int] | Mapping[str, int],
    steps: Mapping[str, Any] | None = None,
    select: Mapping[str, Any] | None = None,
) -> Layout:
    """Lines the arrays up and works out each one's window; every mismatch is a
    ``ValueError`` naming the array and the dimension."""
    keys = [s.key for s in sources]
    by_name = (
        isinstance(crop, Mapping)
        or bool(steps)
        or bool(select)
        or len({len(s.array.shape) for s in sources}) > 1
    )
    if by_name:
        own = {s.key: _names(s) for s in sources}
        dims = merged_dims(list(own.values()))
        axes = {k: tuple(dims.index(n) for n in names) for k, names in own.items()}
        lengths: dict[str, dict[str, int]] = {d: {} for d in dims}
        for s in sources:
            for n, size, f in zip(own[s.key], s.array.shape, s.scale, strict=True):
                lengths[n][s.label] = size * f
        for d, per in lengths.items():
            if len(set(per.values())) > 1:
                raise ValueError(
                    f"arrays do not line up along {d!r} (its length times scale, per array): "
                    + ", ".join(f"{label}: {n}" for label, n in per.items())
                )
        shape = tuple(next(iter(lengths[d].values())) for d in dims)
        if isinstance(crop, Mapping):
            unknown = set(crop) - set(dims)
            if unknown:
                where = sources[0].label if len(sources) == 1 else "the arrays"
                raise ValueError(
                    f"{where}: crop names {sorted(unknown)}, not dimensions of {list(dims)}"
                )
            extents = {d: as_int(c, "crop extents") for d, c in crop.items()}
        else:
            raise ValueError(
                "arrays of different dimensions, or steps= and select=, need crop as a "
                "mapping by dimension name"
            )
        for d, c in extents.items():
            n = shape[dims.index(d)]
            if not 1 <= c <= n:
                raise ValueError(f"crop {dict(crop)}: {d!r} is {c}, must be 1..={n}")
    else:
        shape, _ = joint_grid(sources)
        first = sources[0].array.dimension_names
        same = all(s.array.dimension_names == first for s in sources)
        dims = (
            tuple(first)
            if same and first and all(n is not None for n in first)
            else tuple(f"dim_{i}" for i in range(len(shape)))
        )
        axes = {s.key: tuple(range(len(shape))) for s in sources}
        reference = next((s.array for s in sources if all(f == 1 for f in s.scale)), None)
        crop_tuple = crop_shape(reference if reference is not None else _Grid(shape), crop)
        extents = dict(zip(dims, crop_tuple, strict=True))

    scales = {s.key: s.scale for s in sources}
    step = tuple(
        math.lcm(*(scales[k][axes[k].index(j)] for k in keys if j in axes[k]))
        for j in range(len(dims))
    )
    stepped = _per_array("steps", steps, keys, dims)
    selected = _per_array("select", select, keys, dims)

    # Each array's runs in dataset units: relative to the anchor (follows) or absolute.
    runs: dict[str | None, list[tuple[bool, list[tuple[int, int]]]]] = {}
    for s in sources:
        k = s.key
        per_dim = []
        for i, j in enumerate(axes[k]):
            d, f = dims[j], s.scale[i]
            kinds = [
                w for w, given in (("steps", stepped[k]), ("select", selected[k])) if d in given
            ]
            if len(kinds) == 2 or (kinds and d in extents):
                both = kinds + (["crop"] if d in extents else [])
                raise ValueError(f"{s.label}: dimension {d!r} is given both {' and '.join(both)}")
            if kinds and f != 1:
                raise ValueError(
                    f"{s.label}: dimension {d!r} has scale {f}; {kinds[0]} need scale 1 there"
                )
            if d in stepped[k]:
                per_dim.append((True, [(st, 1) for st in stepped[k][d]]))
            elif d in selected[k]:
                n = s.array.shape[i]
                picked = []
                for x in selected[k][d]:
                    if not -n <= x < n:
                        raise ValueError(
                            f"{s.label}: select[{d!r}] index {x} is outside the dimension of {n}"
                        )
                    picked.append((x % n, 1))
                per_dim.append((False, picked))
            elif d in extents:
                c = extents[d]
                if c % step[j]:
                    coarse = [t.label for t in sources if j in axes[t.key] and step[j] > 1]
                    raise ValueError(
                        f"crop {tuple(extents.values())}: dimension {j} ({c}) is not a multiple "
                        f"of {step[j]}, the scale of {coarse} there"
                    )
                per_dim.append((True, [(0, c)]))
            else:
                per_dim.append((False, [(0, shape[j])]))
        runs[k] = per_dim

    low, extent = [], []
    for j, d in enumerate(dims):
        relative = [
            r
            for k in keys
            if j in axes[k]
            for follows, rs in [runs[k][axes[k].index(j)]]
            if follows
            for r in rs
        ]
        if not relative:
            low.append(0)
            extent.append(shape[j])
            continue
        lo = min(o for o, _ in relative)
        hi = max(o + n for o, n in relative)
        if hi - lo > shape[j]:
            raise ValueError(
                f"the steps along {d!r} reach over {hi - lo} indices; the dimension has {shape[j]}"
            )
        low.append(lo)
        extent.append(hi - lo)

    arrays = {}
    widest = [0] * len(dims)
    for s in sources:
        k = s.key
        own_runs = []
        for i, (follows, rs) in enumerate(runs[k]):
            j, f = axes[k][i], s.scale[i]
            base = low[j] if follows else 0
            own_runs.append(tuple(((o - base) // f, n // f) for o, n in rs))
            widest[j] = max(widest[j], sum(n for _, n in rs))
        arrays[k] = ArrayLayout(
            axes=axes[k],
            runs=tuple(own_runs),
            follows=tuple(follows for follows, _ in runs[k]),
            scale=tuple(s.scale),
        )
    return Layout(
        dims=dims,
        shape=tuple(shape),
        step=step,
        extent=tuple(extent),
        low=tuple(low),
        crop=tuple(widest),
        arrays=arrays,
    )


class _Grid:
    """Stands in for an array when every array is on a coarser grid: just a shape."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.path = "the joint grid"
        self.dimension_names = None
