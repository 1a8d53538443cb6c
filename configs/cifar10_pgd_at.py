"""PGD-AT (Madry et al. 2018) on CIFAR-10: the full recipe.

    python -m kdrobust.main --config configs/cifar10_pgd_at.py --workdir runs/c10_pgd_at_r18
    python -m kdrobust.main --config configs/cifar10_pgd_at.py:arch=wrn34_10 --workdir runs/c10_pgd_at_wrn

Needs CIFAR-10 prepared offline first (``config.data.data_dir``, default the
TFDS directory ``~/tensorflow_datasets``):

    python -m kdrobust.data.prepare cifar10 --source cifar-10-python.tar.gz --data_dir DIR

Recipe (methods.md sections 2, 3.2; AdaAD repo ``Plain_Madry``): SGD lr 0.1,
momentum 0.9, coupled L2 weight decay 5e-4, batch 128, 110 epochs, lr x0.1 at
epochs 100 and 105; pad-4 crop + flip; inner PGD-10, eps 8/255, step 2/255,
uniform random start, student in inference mode during the attack; outer CE on
the adversarial batch in train mode. Evaluation: PGD-20 (step 2/255, uniform
start) on the test set every 5 epochs; the best checkpoint by PGD-20 is kept.
Inputs are raw [0,1] pixels (no mean/std), as in the official codes.
Target (IGDM Tab. 3, ResNet-18): clean 84.52, PGD-20 42.80, AA 41.12.
"""

from kdrobust import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, arch="resnet18", epochs=110)
  c = config_lib.base_config()
  c.num_epochs = a.epochs
  c.data.name = "cifar10"
  c.data.batch_size = 128
  c.data.eval_batch_size = 400  # divides 10,000 and any 1, 2, 4, 8 or 16 devices
  c.model.name = a.arch
  c.model.normalize = False
  c.method = config_lib.method_config(
      "pgd_at", attack=dict(eps=8 / 255, step_size=2 / 255, steps=10, init="uniform"))
  c.optim.lr = 0.1
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "piecewise"
  c.optim.decay_epochs = (100, 105)
  c.eval.eps = 8 / 255
  c.eval.every_epochs = 5
  c.log_every_steps = 100
  return c
