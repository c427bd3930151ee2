"""The fixtures every test module shares: the test arrays, written by zarr-python (the
reference reader and writer), the I/O backends, and the object stores. What they are built
from is in ``support/``."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest

# The object stores (moto's S3, the HTTP object server) the remote tests read from.
from object_stores import object_server, s3  # noqa: F401
from support import DTYPES, LAYOUTS, Written, write_array


@pytest.fixture(scope="session")
def arrays(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Written]:
    root = tmp_path_factory.mktemp("arrays")
    return {
        (layout, dtype): write_array(root / f"{layout}-{dtype}.zarr", layout, dtype, seed=i)
        for i, (layout, dtype) in enumerate(
            (layout, dtype) for layout in LAYOUTS for dtype in DTYPES
        )
    }


@functools.cache
def io_uring_refusal() -> str | None:
    """Why this kernel (or its sandbox) refuses io_uring, or None where it gives a ring.
    Asked in a child process with ``LSIO_IO`` unset, so that this process's choice is not
    fixed by the asking."""
    probe = "import lsio_torch; print(lsio_torch.io_fallback_reason() or '')"
    env = {k: v for k, v in os.environ.items() if k != "LSIO_IO"}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip() or None


@pytest.fixture(params=["io_uring", "pread"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per I/O backend; the io_uring run is skipped, with the kernel's
    reason, where io_uring is refused (a seccomp profile, ``kernel.io_uring_disabled``)."""
    if request.param == "io_uring" and (refused := io_uring_refusal()) is not None:
        pytest.skip(f"io_uring is refused here: {refused}")
    monkeypatch.setenv("LSIO_IO", "uring" if request.param == "io_uring" else "pread")
    return request.param
