"""Regression cases: inputs the fuzzer found that crashed, panicked, hung or read wrongly.
Each is a seed array name, a spec, and the crops (fields as in ``Case``), with a note on
what it did when found, and ``repeat`` for a failure that shows only in some runs (a race).
``test_fuzz.py`` runs each and requires a clean result every time."""

from __future__ import annotations

from typing import Any

REGRESSIONS: list[dict[str, Any]] = [
    {
        # Found by fuzz seed 0 (cases 1379, 2943, 3629, 11627, 15538: the mutations there
        # were incidental): about 2% of reads of the unmutated nested-shard array with 2
        # threads failed with LsioError "engine stopped: engine thread panicked: RefCell
        # already borrowed", the panic at rust/pipeline/batch.rs:132, in an engine job that
        # rayon ran on a thread already inside zarrs' (parallel) sharding decode.
        "id": "nested-shard-refcell-reentry",
        "seed": "v3-shard-nested",
        "spec": {"kind": "multi", "steps": []},
        "origins": [[1, 0, 0]],
        "crop": [3, 17, 13],
        "threads": 2,
        "repeat": 200,
        "note": "nested shards: RefCell already borrowed (rayon re-entry)",
    },
]
