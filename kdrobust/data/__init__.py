"""kdrobust's data layer: TFDS (ArrayRecord, no TensorFlow) and synthetic data.

Public API::

  available() -> list[str]
  info(name, data_dir) -> DatasetInfo        # DatasetNotFoundError if not prepared
  train_iterator(name, *, data_dir, batch_size, seed, start_step=0, augment=True,
                 process_index=None, process_count=None, image_dtype='uint8',
                 workers=0)  # infinite
  eval_iterator(name, *, data_dir, batch_size, split=None, num_examples=None,
                process_index=None, process_count=None, image_dtype='uint8')
                # finite, masked
  steps_per_epoch(name, data_dir, batch_size) -> int
  image_levels(name) -> int   # the uint8 -> float conversion's levels

Batches are numpy: 'image' uint8[b, H, W, C] (the jitted steps convert on the
device, ``kdrobust.data.device.to_float``; ``image_dtype='float32'`` gives the
same values in [0, 1] on the host; no normalisation: the model normalises),
'label' int32[b], and for eval 'mask' bool[b].
``batch_size`` is always the global batch; each process yields its
``batch_size // process_count`` slice. Prepare datasets offline with
``python -m kdrobust.data.prepare <name> --source <file> --data_dir <dir>``.
Importing this package does not import TFDS, TensorFlow or JAX.
"""

from __future__ import annotations

from kdrobust.data.catalog import DatasetInfo
from kdrobust.data.catalog import DatasetNotFoundError
from kdrobust.data.catalog import available
from kdrobust.data.catalog import info
from kdrobust.data.pipeline import eval_iterator
from kdrobust.data.pipeline import image_levels
from kdrobust.data.pipeline import steps_per_epoch
from kdrobust.data.pipeline import train_iterator

__all__ = [
    "DatasetInfo",
    "DatasetNotFoundError",
    "available",
    "eval_iterator",
    "image_levels",
    "info",
    "steps_per_epoch",
    "train_iterator",
]
