"""ZarrCropDataset under Lightning's ``Trainer``: exact epochs and resume, with any number of
workers and ranks. Imported only when used (``pip install lightning``).

>>> from lsio_torch.lightning import ZarrDataModule
>>> dm = ZarrDataModule(train_ds, val=val_ds, num_workers=2)   # doctest: +SKIP
>>> trainer.fit(model, datamodule=dm)                          # doctest: +SKIP

Each epoch of the trainer is the dataset's next epoch (as in any loop: see
:meth:`ZarrCropDataset.set_epoch`). What Lightning needs besides is a loader it can checkpoint:
the training loader's state is where the trainer stands (the dataset's epoch and the batches
this rank's training steps took in it), saved in every checkpoint and loaded before the
loader's workers start, so a run resumed mid-epoch yields the rest of the epoch, and one
resumed from an epoch's end goes on with the next epoch. Every rank yields as many batches
(the dataset pads its epochs), so DDP's steps stay in step. Validation reads the same crops
every time: the validation dataset's epoch 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader

try:
    import lightning.pytorch as pl
except ImportError:  # the older package name
    import pytorch_lightning as pl  # type: ignore[no-redef]

from lsio_torch.dataset import ZarrCropDataset

__all__ = ["ZarrDataModule"]


class _TrainLoader(DataLoader):
    """``DataLoader(ds, batch_size=None)`` whose state (which Lightning saves in its
    checkpoints) is the trainer's place in the dataset's epochs."""

    def __init__(self, dataset: ZarrCropDataset, place: Callable[[], dict[str, int]], **kw: Any):
        super().__init__(dataset, batch_size=None, **kw)
        self._place = place

    def state_dict(self) -> dict[str, int]:
        return self._place()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)


class _ValLoader(DataLoader):
    """``DataLoader(ds, batch_size=None)`` that reads the dataset's epoch 0 every time."""

    def __iter__(self) -> Any:
        self.dataset.set_epoch(0)
        return super().__iter__()


class ZarrDataModule(pl.LightningDataModule):
    """The training (and validation) loaders of a ``ZarrCropDataset`` for Lightning.

    Args:
        train: the training dataset.
        val: a validation dataset, read whole (its epoch 0) at every validation.
        num_workers, persistent_workers, multiprocessing_context, pin_memory: the
            DataLoaders' options (``batch_size=None``: the dataset batches).
    """

    def __init__(
        self,
        train: ZarrCropDataset,
        *,
        val: ZarrCropDataset | None = None,
        num_workers: int = 0,
        persistent_workers: bool = False,
        multiprocessing_context: str | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if train.samples_per_epoch is None:
            raise ValueError("train needs samples_per_epoch: Lightning's epochs end")
        self.train, self.val = train, val
        self._options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
        if num_workers:
            self._options["persistent_workers"] = persistent_workers
            self._options["multiprocessing_context"] = multiprocessing_context
        if val is not None:  # Lightning runs validation where this hook is overridden
            self.val_dataloader = self._val_dataloader

    def train_dataloader(self) -> DataLoader:
        return _TrainLoader(self.train, self._place, **self._options)

    def _val_dataloader(self) -> DataLoader:
        return _ValLoader(self.val, batch_size=None, **self._options)

    def _place(self) -> dict[str, int]:
        """Where this rank's training stands: the epoch, and the batches its steps took in it
        (the epoch's end is the next epoch's start)."""
        epoch = self.train.current_epoch()
        done = 0
        if self.trainer is not None:
            done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= len(self.train):
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batch": done}
