"""Quickstart: PGD adversarial training of a small CNN on real digits, on any CPU.

    python -m kdrobust.main --config configs/quickstart.py --workdir runs/quickstart

Data: scikit-learn's bundled 8x8 handwritten digits (1,437 train / 360 test),
prepared automatically the first time (no network). Model: ``small_cnn`` (3
conv-BN-ReLU blocks). Method: PGD-AT (Madry), eps = 0.1 in [0,1] pixel space,
PGD-5 inner attack with step eps/4, uniform start; evaluation with PGD-20 at
the same eps. Runs in a few minutes on a 2-core CPU.
"""

from kdrobust import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, epochs=15, eps=0.1)
  c = config_lib.base_config()
  c.seed = 0
  c.num_epochs = a.epochs
  c.data.name = "digits"
  c.data.batch_size = 64
  c.data.eval_batch_size = 120
  c.model.name = "small_cnn"
  c.method = config_lib.method_config(
      "pgd_at", attack=dict(eps=a.eps, step_size=a.eps / 4, steps=5, init="uniform"))
  c.optim.lr = 0.05
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "cosine"
  c.eval.eps = a.eps
  c.eval.every_epochs = 5
  c.log_every_steps = 20
  c.ckpt.every_epochs = 1
  return c
