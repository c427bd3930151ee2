"""examples/train.ipynb runs top to bottom in a real Jupyter kernel, in its small
configuration, within a time bound: no cell fails, the crops and the plots are drawn, and the
crops read over HTTP equal the local ones."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).parents[1] / "examples" / "train.ipynb"
#: The small configuration runs in about 30 s on two cores; a cell past this is a failure.
CELL_TIMEOUT_S = 300
TOTAL_BOUND_S = 600


def test_the_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("LSIO_NOTEBOOK_SMALL", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # its data goes to tmp_path/data
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell that failed
    assert time.perf_counter() - start < TOTAL_BOUND_S
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    # The batch of crops, the joint crops, loss and waiting, the bench, the engine's stats.
    assert len(images) == 5, text
    assert "equal to the local read: True" in text
    assert "40 steps in" in text
    assert "lsio_torch" in text and "decode bound" in text
    assert (tmp_path / "data" / "demo-sat.zarr" / "zarr.json").exists()
