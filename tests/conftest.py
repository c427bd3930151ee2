"""The fixtures every test module shares: the test arrays, written by zarr-python (the
reference reader and writer), the I/O backends, and the object stores. What they are built
from is in ``support/``."""

from __future__ import annotations

import pytest

# The object stores (moto's S3, the HTTP object server) the remote tests read from.
from object_stores import object_server, s3  # noqa: F401
from support import DTYPES, LAYOUTS, Written, io_uring_refusal, write_array


@pytest.fixture(scope="session")
def arrays(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Written]:
    root = tmp_path_factory.mktemp("arrays")
    return {
        (layout, dtype): write_array(root / f"{layout}-{dtype}.zarr", layout, dtype, seed=i)
        for i, (layout, dtype) in enumerate(
            (layout, dtype) for layout in LAYOUTS for dtype in DTYPES
        )
    }


@pytest.fixture(params=["io_uring", "pread"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per I/O backend; the io_uring run is skipped, with the kernel's
    reason, where io_uring is refused (a seccomp profile, ``kernel.io_uring_disabled``)."""
    if request.param == "io_uring" and (refused := io_uring_refusal()) is not None:
        pytest.skip(f"io_uring is refused here: {refused}")
    monkeypatch.setenv("LSIO_IO", "uring" if request.param == "io_uring" else "pread")
    return request.param
