"""Smoke run on the real CIFAR-10 subset (5,085 train / 1,017 test images).

Prepare it once (offline):

    python -m kdrobust.data.prepare cifar10 \
        --source ../shared/data/cifar10-subset/cifar-10-python-subset.tar.gz \
        --data_dir data/cifar10_subset

then

    python -m kdrobust.main --config configs/cifar10_subset_pgd_at.py --workdir runs/subset_pgd_at
    python -m kdrobust.main --config configs/cifar10_subset_pgd_at.py:method=trades --workdir runs/subset_trades

A small CNN, PGD-AT (or TRADES) with eps 8/255 and a PGD-5 inner attack,
10 epochs: minutes on a CPU. Accuracies on this subset are not CIFAR-10 results.
"""

from kdrobust import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, method="pgd_at", epochs=10, data_dir="data/cifar10_subset",
                           arch="small_cnn")
  c = config_lib.base_config()
  c.num_epochs = a.epochs
  c.data.name = "cifar10"
  c.data.data_dir = a.data_dir
  c.data.batch_size = 128
  c.data.eval_batch_size = 339  # 1,017 = 3 x 339: no padding needed
  c.model.name = a.arch
  init = "gaussian" if a.method == "trades" else "uniform"
  c.method = config_lib.method_config(
      a.method, attack=dict(eps=8 / 255, step_size=2 / 255, steps=5, init=init))
  c.optim.lr = 0.05
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "cosine"
  c.eval.eps = 8 / 255
  c.eval.every_epochs = 5
  c.log_every_steps = 10
  return c
