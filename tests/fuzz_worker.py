"""The fuzz test's subprocess: reads crops of (mutated) arrays, one request per line.

    python tests/fuzz_worker.py lsio   # lsio_torch.read_crops
    python tests/fuzz_worker.py zarr   # zarr-python, the reference

Each stdin line is a JSON request ``{"path": ..., "origins": [[...], ...], "crop": [...],
"threads": n}``; each answer is one JSON line on the original stdout: ``{"status": "ok",
"sha256": ..., "dtype": ..., "shape": [...]}`` of the ``[N, *crop]`` result in native byte
order, or ``{"status": "error", "type": ..., "module": ..., "message": ...}``. The first line
written is ``{"ready": true}``, once the imports are done. Anything else the process prints
goes to stderr, so that it cannot corrupt the answers; a crash (a signal) ends the process
and the parent sees end of file.

``LSIO_FUZZ_MEMORY_MB`` caps the address space (default 8192), so that a hostile chunk
shape fails its allocation rather than taking the machine's memory.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import resource
import sys
import warnings
from typing import Any


def _limit_memory() -> None:
    mb = int(os.environ.get("LSIO_FUZZ_MEMORY_MB", "8192"))
    if mb > 0:
        limit = mb * 2**20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _answer(data: bytes, dtype: str, shape: list[int]) -> dict[str, Any]:
    return {
        "status": "ok",
        "sha256": hashlib.sha256(data).hexdigest(),
        "dtype": dtype,
        "shape": shape,
    }


def lsio_reader():
    import torch

    import lsio_torch

    def read(req: dict[str, Any]) -> dict[str, Any]:
        out = lsio_torch.read_crops(
            req["path"], req["origins"], req["crop"], threads=req.get("threads")
        )
        flat = out.contiguous().reshape(-1)
        data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        return _answer(data, str(out.dtype).removeprefix("torch."), list(out.shape))

    return read


def zarr_reader():
    import numpy as np
    import zarr

    def read(req: dict[str, Any]) -> dict[str, Any]:
        array = zarr.open_array(req["path"], mode="r")
        crops = []
        for origin in req["origins"]:
            region = tuple(slice(o, o + c) for o, c in zip(origin, req["crop"], strict=True))
            crops.append(np.asarray(array[region]))
        values = np.stack(crops)
        values = np.ascontiguousarray(values.astype(values.dtype.newbyteorder("="), copy=False))
        return _answer(values.tobytes(), values.dtype.name, list(values.shape))

    return read


def main() -> None:
    mode = sys.argv[1]
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints (from Python or native code) go to stderr
    faulthandler.enable()
    warnings.simplefilter("ignore")
    _limit_memory()
    read = {"lsio": lsio_reader, "zarr": zarr_reader}[mode]()
    answers.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        try:
            result = read(req)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # pyo3's PanicException is a BaseException
            result = {
                "status": "error",
                "type": type(e).__name__,
                "module": type(e).__module__,
                "message": str(e)[:4000],
            }
        answers.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
