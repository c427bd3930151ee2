"""Each new iteration of a dataset is the next epoch, in whatever loop: no set_epoch needed,
with or without DataLoader workers (persistent or not, under every start method), with
StatefulDataLoader, across a checkpoint, and on every rank alike."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
import torch.multiprocessing
from support import gloo_group, write_array
from torch.utils.data import DataLoader

import lsio_torch

CROP = (2, 9, 7)
EPOCH = dict(batch_size=4, samples_per_epoch=22, seed=11)  # 6 batches, the last one of 2 crops


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("epochs")
    return write_array(folder / "a.zarr", "shard-index-end", "int16").path


def dataset(path, **kw):
    return lsio_torch.ZarrCropDataset(path, CROP, return_origins=True, **{**EPOCH, **kw})


def origins_of(batches) -> list[tuple[int, ...]]:
    return [tuple(o) for _, origins in batches for o in origins.tolist()]


@pytest.fixture(scope="module")
def epochs(path):
    """The origins of epochs 0..3, each chosen with set_epoch in this process."""
    ds = dataset(path)
    out = []
    for e in range(4):
        ds.set_epoch(e)
        out.append(origins_of(ds))
    assert len({tuple(e) for e in out}) == 4 and all(len(e) == 22 for e in out)
    return out


def loader(ds, workers, method=None, stateful=False, **kw):
    if stateful:
        from torchdata.stateful_dataloader import StatefulDataLoader as Loader
    else:
        Loader = DataLoader
    extra = {"multiprocessing_context": method} if workers else {}
    return Loader(ds, batch_size=None, num_workers=workers, **extra, **kw)


LOOPS = [(0, None, False), (2, "fork", False), (2, "spawn", False), (2, "forkserver", False),
         (2, "fork", True), (2, "spawn", True)]  # fmt: skip


@pytest.mark.parametrize(("workers", "method", "persistent"), LOOPS)
def test_a_plain_loop_without_set_epoch_yields_epochs_0_1_2(
    path, epochs, workers, method, persistent
):
    ds = dataset(path)
    dl = loader(ds, workers, method, persistent_workers=persistent)
    seen = [origins_of(dl) for _ in range(3)]
    assert seen == epochs[:3]


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_advances_too(path, epochs, workers):
    pytest.importorskip("torchdata.stateful_dataloader", reason="torchdata is not installed")
    dl = loader(dataset(path), workers, "fork" if workers else None, stateful=True)
    assert [origins_of(dl) for _ in range(3)] == epochs[:3]


def test_set_epoch_wins_and_the_count_goes_on_from_it(path, epochs):
    ds = dataset(path)
    dl = loader(ds, 2, "fork")
    assert origins_of(dl) == epochs[0]
    ds.set_epoch(2)
    assert origins_of(dl) == epochs[2]
    assert origins_of(dl) == epochs[3]
    ds.set_epoch(1)
    assert origins_of(ds) == epochs[1]  # in this process, on the same count
    assert origins_of(dl) == epochs[2]


def test_a_second_iter_is_the_next_epoch_even_unfinished(path, epochs):
    ds = dataset(path)
    first = iter(ds)
    assert origins_of([next(first)]) == epochs[0][:4]
    # An iteration begins at its first batch: one made and dropped unused counts nothing.
    unused = iter(ds)
    del unused
    assert origins_of(ds) == epochs[1]
    assert ds.state_dict()["epoch"] == 2 and ds.state_dict()["batch"] == 0


def test_a_position_loaded_with_workers_resumes_then_the_count_goes_on(path, epochs):
    ds = dataset(path)
    ds.load_state_dict({"epoch": 1, "batch": 2})
    dl = loader(ds, 2, "spawn")
    assert origins_of(dl) == epochs[1][8:]
    assert origins_of(dl) == epochs[2]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("taken", [3, 6, None])  # mid-epoch, after its last batch, at its end
def test_stateful_dataloader_resumes_mid_epoch_and_at_its_end(path, epochs, workers, taken):
    pytest.importorskip("torchdata.stateful_dataloader", reason="torchdata is not installed")
    dl = loader(dataset(path), workers, "fork" if workers else None, stateful=True)
    batches = []
    for batch in dl:
        batches.append(batch)
        if len(batches) == taken:
            break
    state = dl.state_dict()
    assert origins_of(batches) == epochs[0][: 4 * (taken or 6)]
    again = loader(dataset(path), workers, "fork" if workers else None, stateful=True)
    again.load_state_dict(state)
    if taken is not None:
        # The rest of epoch 0 (after the last batch, none: the loop had not seen its end).
        assert origins_of(again) == epochs[0][4 * taken :]
    # Then the next epochs, as in the uninterrupted run.
    assert origins_of(again) == epochs[1]
    assert origins_of(again) == epochs[2]


def test_a_dataset_made_anew_each_epoch_is_warned_about_once(path, caplog):
    caplog.set_level(logging.WARNING, logger="lsio_torch")
    for _ in range(3):  # a seed of its own: no other test has iterated this dataset
        origins_of(dataset(path, samples_per_epoch=4, seed=1234))
    repeats = [r for r in caplog.records if "already iterated" in r.getMessage()]
    assert len(repeats) == 1
    assert "epoch 0 of this dataset" in repeats[0].getMessage()
    caplog.clear()
    ds = dataset(path, samples_per_epoch=4, seed=1234)
    for e in range(3):
        ds.set_epoch(e)  # chosen: not a repeat, even where an earlier dataset began it
        origins_of(ds)
    assert not [r for r in caplog.records if "already iterated" in r.getMessage()]


def _rank(rank: int, world: int, ds, rendezvous: str, out: str) -> None:
    with gloo_group(rank, world, rendezvous):
        dl = loader(ds, rank, "fork")
        seen = [origins_of(dl) for _ in range(2)]
        with open(f"{out}.{rank}", "w") as f:
            json.dump(seen, f)


def test_ranks_that_receive_one_dataset_count_their_own_epochs(path, epochs, tmp_path):
    # As under ddp_spawn: the dataset made once, pickled to each rank; rank 0 iterates in its
    # own process, rank 1 through a worker. One count per rank, not one shared by both.
    ds = dataset(path)
    out = tmp_path / "origins"
    torch.multiprocessing.spawn(
        _rank, args=(2, ds, str(tmp_path / "rendezvous"), str(out)), nprocs=2, join=True
    )
    for rank in (0, 1):
        seen = [[tuple(o) for o in e] for e in json.loads(out.with_suffix(f".{rank}").read_text())]
        for e in range(2):
            # Rank r's batches of epoch e: r, r + 2, ... of the whole epoch.
            whole = [epochs[e][i : i + 4] for i in range(0, 22, 4)]
            assert seen[e] == [o for b in whole[rank::2] for o in b], (rank, e)


def test_the_count_leaves_no_file_behind(path):
    import gc

    from lsio_torch._epochs import _folder

    def boards() -> set[str]:
        return {n for n in os.listdir(_folder()) if n.startswith("lsio_torch-epochs-")}

    gc.collect()
    before = boards()
    datasets = [dataset(path) for _ in range(3)]
    for ds in datasets:
        origins_of(loader(ds, 2, "spawn"))  # workers that open the board and exit
    assert len(boards() - before) == 3
    del datasets, ds
    gc.collect()
    assert boards() <= before


def test_with_no_folder_to_share_the_count_a_process_counts_alone(path, epochs, tmp_path, caplog):
    # Where /dev/shm and the temporary folder both refuse files: said once, and a loop with
    # no workers still advances and resumes on its own.
    import lsio_torch._epochs

    caplog.set_level(logging.WARNING, logger="lsio_torch")
    lsio_torch.dataset._warned.discard("board")  # said once a process: this test's process
    folder = lsio_torch._epochs._folder
    lsio_torch._epochs._folder = lambda: str(tmp_path / "missing")
    try:
        ds = dataset(path)
        assert [origins_of(ds) for _ in range(2)] == epochs[:2]
        ds.load_state_dict({"epoch": 3, "batch": 4})
        assert origins_of(ds) == epochs[3][16:]
    finally:
        lsio_torch._epochs._folder = folder
    said = [r for r in caplog.records if "cannot be shared" in r.getMessage()]
    assert len(said) == 1, said
