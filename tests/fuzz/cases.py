"""Cases: a spec and the crops read from its result, a pure function of (fuzz seed, case
index) and the seed arrays, and a case materialized as a mutated store."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .apply import apply_spec
from .mutations import gen_one, systematic_meta
from .seeds import METADATA_FILES, SHAPE, Seed


@dataclasses.dataclass(frozen=True)
class Case:
    """One fuzz input: a mutation of a seed array, and the crops read from it."""

    index: int
    seed: str
    spec: dict[str, Any]
    origins: list[list[int]]
    crop: list[int]
    threads: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _first_file(spec: dict[str, Any]) -> tuple[str | None, int | None]:
    """The chunk file (and inner chunk) a spec edits first, if any."""
    if spec["kind"] == "multi":
        for step in spec["steps"]:
            file, inner = _first_file(step)
            if file is not None:
                return file, inner
        return None, None
    file = spec.get("file") or spec.get("a") or spec.get("dst")
    if file is None or file in METADATA_FILES:
        return None, None
    return file, spec.get("inner")


def target_block(spec: dict[str, Any], seed: Seed) -> tuple[list[int], list[int]] | None:
    """The region (start, size) of the chunk, shard or inner chunk a spec edits."""
    file, inner = _first_file(spec)
    if file is None:
        return None
    key = file.removeprefix("c/")
    try:
        coords = [int(k) for k in re.split(r"[./]", key)]
    except ValueError:
        return None
    if len(coords) != len(SHAPE):
        return None
    block = list(seed.block)
    start = [c * b for c, b in zip(coords, block, strict=True)]
    if inner is not None:
        per_dim = [s // i for s, i in zip(seed.block, seed.grid, strict=True)]
        position = np.unravel_index(inner, per_dim)
        start = [s + int(p) * i for s, p, i in zip(start, position, seed.grid, strict=True)]
        block = list(seed.grid)
    return start, block


def gen_crops(
    rng: random.Random, seed: Seed, target: tuple[list[int], list[int]] | None = None
) -> tuple[list[list[int]], list[int]]:
    """Crops inside the (original) array that mostly cross several chunks, some at the
    array's edges (where chunks are partial). With a `target` region (the chunk a mutation
    edits), the first crop overlaps it."""
    crop = []
    for s, c in zip(SHAPE, seed.grid, strict=True):
        low = min(s, c // 2 + 1) if rng.random() < 0.9 else 1
        crop.append(rng.randint(low, s))
    origins = []
    for i in range(rng.choice([1, 1, 2, 3])):
        origin = []
        for d, (s, c) in enumerate(zip(SHAPE, crop, strict=True)):
            low, high = 0, s - c
            if i == 0 and target is not None:
                start, size = target[0][d], target[1][d]
                low, high = max(low, start - c + 1), min(high, start + size - 1)
                if low > high:  # outside the array (a chunk file that should not be)
                    low, high = 0, s - c
            r = rng.random()
            origin.append(low if r < 0.1 else high if r < 0.3 else rng.randint(low, high))
        origins.append(origin)
    return origins, crop


class CaseGenerator:
    """Case `i` of fuzz seed `s`, a pure function of (s, i) and the seed arrays. Every
    fourth case walks the systematic list of numeric metadata fields and boundary values,
    so that a run of 4x its length covers each pair once; the others are drawn at random."""

    def __init__(self, seeds: dict[str, Seed], fuzz_seed: int = 0) -> None:
        self.seeds = seeds
        self.fuzz_seed = fuzz_seed
        self.systematic = systematic_meta(seeds)

    def case(self, index: int) -> Case:
        rng = random.Random(f"{self.fuzz_seed}:{index}")
        if index % 4 == 0:
            k = (index // 4 + self.fuzz_seed * 7919) % len(self.systematic)
            name, spec = self.systematic[k]
        else:  # sharded arrays, with the most to go wrong, are drawn 3 times as often
            names = sorted(self.seeds)
            weights = [3 if self.seeds[n].sharded else 1 for n in names]
            name = rng.choices(names, weights)[0]
            spec = gen_one(rng, self.seeds[name], self.seeds)
        seed = self.seeds[name]
        origins, crop = gen_crops(rng, seed, target_block(spec, seed))
        return Case(index, name, spec, origins, crop, rng.choice([1, 2]))


def spec_summary(spec: dict[str, Any], limit: int = 200) -> str:
    """A one-line description of a spec."""
    text = json.dumps(spec, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def materialize(case: Case, seeds: dict[str, Seed], store: Path) -> Path:
    """Copies the case's seed array to `store` and applies the mutation."""
    seed = seeds[case.seed]
    shutil.copytree(seed.path, store)
    apply_spec(case.spec, store, seeds, seed)
    return store
