"""What the tests share: writing arrays with zarr-python, comparing crops with its reads,
damaging stores on purpose, and watching the engine's threads. One place, imported by every
test module (``from support import ...``); the fixtures that use it are in ``conftest.py``."""

from support.checks import (
    check_batches,
    check_crops,
    chunks_touched,
    crop_origins,
    reference_crop,
    same_bits,
    same_values,
)
from support.damage import (
    cut_file,
    flip_bit,
    junk_head,
    rewrite_json,
    rewrite_shard_index,
    shard_index,
)
from support.data import (
    DTYPES,
    FILL,
    INNER,
    LAYOUTS,
    SHAPE,
    SHARD,
    Written,
    smooth_field,
    write_array,
    write_zarr,
)
from support.process import (
    engine_threads,
    epochs_of,
    gloo_group,
    io_uring_refusal,
    rss_bytes,
    wait_until,
)

__all__ = [
    "DTYPES",
    "FILL",
    "INNER",
    "LAYOUTS",
    "SHAPE",
    "SHARD",
    "Written",
    "check_batches",
    "check_crops",
    "chunks_touched",
    "crop_origins",
    "cut_file",
    "engine_threads",
    "epochs_of",
    "flip_bit",
    "gloo_group",
    "io_uring_refusal",
    "junk_head",
    "reference_crop",
    "rewrite_json",
    "rewrite_shard_index",
    "rss_bytes",
    "same_bits",
    "same_values",
    "shard_index",
    "smooth_field",
    "wait_until",
    "write_array",
    "write_zarr",
]
