"""The datasets of one run, built from a split and a config: what fit trains and evaluates on."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch.utils.data import DataLoader, Dataset

from training.config import FitConfig
from training.data import DataError, ImageDataset, Split, eval_transform, train_transform


@dataclass
class RunData:
    """The datasets of one run: the training images (training augmentation) that fit trains
    on, and the evaluation sets (eval transform) with ordered loaders over them."""

    class_names: list[str]
    train_counts: list[int]
    train: Dataset
    """Training images with the training augmentation (an ImageDataset, or their cached
    backbone features: training.feature_cache); items are (tensor, label), ``labels`` lists
    every label."""
    eval_sets: dict[str, Dataset] = field(default_factory=dict)
    """train_eval (training images, eval transform), val, test, open_val, open_test."""
    batch_size: int = 256
    num_workers: int = 0

    @classmethod
    def from_split(cls, split: Split, cfg: FitConfig) -> RunData:
        """Wrap ``split`` in datasets with ``cfg``'s train and eval transforms."""
        evaluate, on_corrupt = eval_transform(cfg.data), cfg.data.on_corrupt
        sources = {
            "train_eval": split.train,
            "val": split.val,
            "test": split.test,
            "open_val": split.open_val,
            "open_test": split.open_test,
        }
        return cls(
            class_names=list(split.class_names),
            train_counts=list(split.train_counts),
            train=ImageDataset(split.train, train_transform(cfg.data), on_corrupt=on_corrupt),
            eval_sets={
                name: ImageDataset(samples, evaluate, on_corrupt=on_corrupt)
                for name, samples in sources.items()
                if samples
            },
            batch_size=cfg.eval.batch_size,
            num_workers=cfg.data.num_workers,
        )

    def has(self, name: str) -> bool:
        return name in self.eval_sets

    def loader(self, name: str) -> DataLoader:
        """An ordered loader over the eval set ``name``."""
        if name not in self.eval_sets:
            raise DataError(f"this run has no {name!r} images")
        return DataLoader(
            self.eval_sets[name],
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )
