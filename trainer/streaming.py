"""`--stream`: an image folder too large for memory, decoded per batch.

The pipeline splits and subsamples the folder's file list exactly as it would its images
(`askexpert.datasets.list_dataset`), then each split becomes `LazyImages`: training reads it
through DataLoader workers, evaluation decodes one batch at a time. Normalisation statistics come
from a seeded sample of the training files (`stream_stats`).
"""

from __future__ import annotations

import numpy as np
import torch

from askexpert.datasets import LabelledImages, LazyImages, StreamingImages, stream_stats
from trainer.data import Data


def streamed_data(cfg, train: LabelledImages, val: LabelledImages, test: LabelledImages):
    """The pipeline's `Data` with lazy images in place of tensors (file paths in `.images`)."""
    size, chans, mean, std = stream_stats(train.images, cfg.img_size or None, seed=cfg.seed)

    def lazy(d: LabelledImages) -> tuple[LazyImages, torch.Tensor]:
        return LazyImages(StreamingImages(list(d.images), size, chans, list(mean), list(std))), torch.from_numpy(d.labels.astype(np.int64))

    return Data.of((lazy(train), lazy(val), lazy(test)), train, (mean, std), (size, chans))
