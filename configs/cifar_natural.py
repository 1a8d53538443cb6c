"""Natural (clean) training of a CIFAR teacher: MTARD's natural teacher.

    python -m kdrobust.main --config configs/cifar_natural.py --workdir runs/cifar10_natural_wrn34_10
    python -m kdrobust.main --config configs/cifar_natural.py:dataset=cifar100 \
        --workdir runs/cifar100_natural_wrn34_10

Args: ``dataset=cifar10|cifar100``, ``arch=<kdrobust.models name>`` (default
``wrn34_10``). configs/cifar_mtard.py reads ``runs/<dataset>_natural_<arch>``
by default, so keep that workdir name.

Recipe: CHOICE (no paper in methods.md gives MTARD's natural-teacher
training): the standard CIFAR recipe, SGD lr 0.1, momentum 0.9, weight decay
5e-4, batch 128, 200 epochs, lr x0.1 at 100 and 150, pad-4 crop + flip, cross
entropy on clean inputs, raw [0, 1] pixels (``model.normalize = False``, as
the distillation codes feed their teachers). The run's "best" checkpoint is
chosen by PGD-20 accuracy (about 0% for a natural model), so
configs/cifar_mtard.py loads this run's LATEST checkpoint (``which='latest'``).
No target numbers (a WRN-34-10 typically reaches about 95% clean accuracy on
CIFAR-10 and about 78% on CIFAR-100; literature values, not a paper's).
"""

import os
import sys

from kdrobust import config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  a = config_lib.parse_arg(arg, dataset="cifar10", arch="wrn34_10")
  ps.choice("dataset", a.dataset, ps.DATASETS)
  r = ps.recipe("natural", "kdrobust")
  c = config_lib.base_config()
  c.num_epochs = r["epochs"]
  c.data.name = a.dataset
  c.data.batch_size = r["batch_size"][a.dataset]
  c.data.eval_batch_size = 400
  c.model.name = a.arch
  c.model.normalize = False
  c.method = config_lib.method_config("natural")
  c.optim.lr = 0.1
  c.optim.weight_decay = r["weight_decay"]
  c.optim.schedule = "piecewise"
  c.optim.decay_epochs = r["decay_epochs"]
  c.eval.eps = 8 / 255
  c.eval.every_epochs = 5
  c.log_every_steps = 100
  return c


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  return [f"dataset={d}" for d in ps.DATASETS]
