"""A Lightning training run on 2 CPU ranks (gloo), as a user writes it, for test_lightning:
records the crops each rank's training steps saw, and checkpoints after every step.

python lightning_script.py ARRAY OUT STRATEGY WORKERS [CHECKPOINT]
"""

from __future__ import annotations

import json
import os
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lsio_torch
from lsio_torch.lightning import ZarrDataModule

CROP = (2, 9, 7)
EPOCHS = 3
# 52 samples in batches of 4: 13 batches, 7 a rank (the epoch padded with its first).
DATASET = dict(batch_size=4, samples_per_epoch=52, seed=5, return_origins=True)


class Model(pl.LightningModule):
    def __init__(self, out: str) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(CROP[-1], 1)
        self.out = out
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        x, origins = batch
        self.seen.append([self.current_epoch, *(v for o in origins.tolist() for v in o)])
        return self.layer(x.float()).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_train_end(self) -> None:
        with open(os.path.join(self.out, f"rank{self.global_rank}.json"), "w") as f:
            json.dump(self.seen, f)


def main() -> None:
    path, out, strategy, workers = sys.argv[1:5]
    checkpoint = sys.argv[5] if len(sys.argv) > 5 else None
    ds = lsio_torch.ZarrCropDataset(path, CROP, **DATASET)
    dm = ZarrDataModule(ds, num_workers=int(workers))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=EPOCHS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[
            ModelCheckpoint(
                dirpath=os.path.join(out, "checkpoints"), every_n_train_steps=1, save_top_k=-1
            )
        ],
    )
    trainer.fit(Model(out), datamodule=dm, ckpt_path=checkpoint)


if __name__ == "__main__":
    main()
