"""The AdaAD train step on both sides, from the same weights and the same batch.

JAX: kdrobust's own step (``kdrobust.train_step.make_train_step`` with
``kdrobust.methods.make('adaad')``), with the optimizer of
``kdrobust.train.make_optimizer`` rebuilt here from optax (that module imports
ml_collections): SGD, momentum 0.9, coupled weight decay 5e-4, lr 0.1.

PyTorch: the official step, written from ``boyellow/AdaAD@9e5c6e5``
(``AT_helper.py:8-48`` ``adaad_inner_loss``, ``main.py:326-353`` the AdaAD
branch of ``train``):

* inner: student ``eval()``, teacher ``eval()``, start
  ``x + 0.001 N(0, I)`` (not clamped), K steps of
  ``x' <- clip_[0,1](Pi_eps(x' + a sign(grad_x' sum KL(p_T(x') || p_S(x')))))``
  with the gradient through both networks;
* outer: student ``train()``, ``S(x)`` then ``S(x')`` (two train-mode
  forwards), teacher ``T(x)`` and ``T(x')`` under ``no_grad``,
  ``loss = a KLDiv_mean(S(x'), T(x')) + (1 - a) KLDiv_mean(S(x), T(x))`` with
  ``nn.KLDivLoss()``'s element mean (CIFAR-10), ``a = 1``;
* ``torch.optim.SGD(lr 0.1, momentum 0.9, weight_decay 5e-4)``;
  ``cudnn.benchmark = True`` on CUDA (``main.py:195``).

Not timed here: ``main.py:389-391``'s per-step bookkeeping (``loss.data`` and a
``.cpu()`` of the clean accuracy, a host sync every step) belongs to the loop.

Differences in work between the two sides, by design of each code base:
with ``a = 1`` the official code still computes ``T(x)`` and back-propagates
the zero-weighted clean KL through ``S(x)``; kdrobust skips ``T(x)`` and runs
``S(x)`` for its batch-norm update only. Each row's FLOPs are therefore
counted on its own side (XLA cost analysis / torch's FLOP counter).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

NUM_CLASSES = 10
STEPS_PER_EPOCH = 391  # ceil(50,000 / 128): the lr schedule is constant here anyway


# ---------------------------------------------------------------- JAX

@dataclasses.dataclass
class JaxStep:
  step: Any  # the jitted step (state donated)
  tx: Any
  method: Any


def jax_step(student_module, teacher_module, *, pgd_steps: int, eps: float,
             step_size: float, unroll: Any = 1, alpha: float = 1.0) -> JaxStep:
  import optax  # pylint: disable=g-import-not-at-top
  from kdrobust import methods, train_step  # pylint: disable=g-import-not-at-top
  method = methods.make("adaad", alpha=alpha, reduction="elemmean",
                        attack={"eps": eps, "step_size": step_size, "steps": pgd_steps,
                                "init": "gaussian", "bn_mode": "eval", "unroll": unroll})
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
  step = train_step.make_train_step(
      apply_fn=student_module.apply, method=method, tx=tx,
      teacher_apply_fns=[teacher_module.apply], num_classes=NUM_CLASSES, num_epochs=1,
      steps_per_epoch=STEPS_PER_EPOCH, seed=0)
  return JaxStep(step, tx, method)


def jax_state(variables, js: JaxStep):
  """A fresh train state (copies: the step donates its state)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from kdrobust.state import TrainState  # pylint: disable=g-import-not-at-top
  v = jax.tree.map(lambda a: jnp.array(a, copy=True), variables)
  return TrainState.create(v["params"], v.get("batch_stats", {}), js.tx,
                           js.method.init_state(NUM_CLASSES))


# ---------------------------------------------------------------- PyTorch

@dataclasses.dataclass(frozen=True)
class TorchMode:
  label: str
  tf32: bool | None  # None: torch's defaults (cuDNN TF32 on, matmul TF32 off)
  amp: bool = False  # autocast to bfloat16
  channels_last: bool = False
  compile: bool = False


@contextlib.contextmanager
def torch_flags(mode: TorchMode, benchmark: bool):
  """Set the TF32 / cuDNN flags of ``mode`` for the block, then restore them."""
  import torch  # pylint: disable=g-import-not-at-top
  saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
           torch.backends.cudnn.benchmark)
  try:
    if mode.tf32 is not None:
      torch.backends.cuda.matmul.allow_tf32 = mode.tf32
      torch.backends.cudnn.allow_tf32 = mode.tf32
    torch.backends.cudnn.benchmark = benchmark
    yield
  finally:
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.benchmark) = saved


def autocast(mode: TorchMode, device):
  import torch  # pylint: disable=g-import-not-at-top
  if not mode.amp:
    return contextlib.nullcontext()
  return torch.autocast(device_type=str(device).split(":")[0], dtype=torch.bfloat16)


class TorchAdaAD:
  """The official AdaAD step (module docstring) on ``device`` in ``mode``."""

  def __init__(self, student, teacher, mode: TorchMode, device, *, pgd_steps: int,
               eps: float, step_size: float, alpha: float = 1.0,
               compile_backend: str = "inductor"):
    import torch  # pylint: disable=g-import-not-at-top
    self.torch = torch
    self.mode = mode
    self.device = device
    self.steps, self.eps, self.step_size, self.alpha = pgd_steps, eps, step_size, alpha
    if mode.channels_last:
      student = student.to(memory_format=torch.channels_last)
      teacher = teacher.to(memory_format=torch.channels_last)
    self.student_module = student
    self.teacher_module = teacher
    # The official code leaves every parameter trainable: eager autograd prunes the
    # weight gradients that torch.autograd.grad(loss, [x_adv]) does not ask for. A
    # compiled backward computes the gradients of every input that requires one, so
    # the compiled row freezes the teacher and, during the attack, the student.
    self.freeze_in_attack = mode.compile
    if mode.compile:
      teacher.requires_grad_(False)
    self.opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    if mode.compile:
      self.student = torch.compile(student, backend=compile_backend)
      self.teacher = torch.compile(teacher, backend=compile_backend)
    else:
      self.student, self.teacher = student, teacher

  def prepare(self, x):
    if self.mode.channels_last:
      return x.contiguous(memory_format=self.torch.channels_last)
    return x

  def _kl_mean(self, s_logits, t_logits):
    F = self.torch.nn.functional
    # nn.KLDivLoss() = reduction 'mean': the mean over all B x C elements.
    return F.kl_div(F.log_softmax(s_logits.float(), dim=1), F.softmax(t_logits.float(), dim=1),
                    reduction="sum") / s_logits.numel()

  def inner(self, x):
    """``adaad_inner_loss``: PGD on sum KL(p_T(x') || p_S(x')), both nets in eval mode."""
    torch, F = self.torch, self.torch.nn.functional
    self.student_module.eval()
    self.teacher_module.eval()
    if self.freeze_in_attack:
      self.student_module.requires_grad_(False)
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(self.steps):
      x_adv.requires_grad_()
      with torch.enable_grad(), autocast(self.mode, self.device):
        loss_kl = F.kl_div(F.log_softmax(self.student(x_adv).float(), dim=1),
                           F.softmax(self.teacher(x_adv).float(), dim=1), reduction="sum")
      grad = torch.autograd.grad(loss_kl, [x_adv])[0]
      x_adv = x_adv.detach() + self.step_size * torch.sign(grad.detach())
      x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps)
      x_adv = torch.clamp(x_adv, 0.0, 1.0)
    if self.freeze_in_attack:
      self.student_module.requires_grad_(True)
    self.student_module.train()
    return torch.clamp(x_adv, 0.0, 1.0).detach()

  def __call__(self, x):
    """One train step on ``x`` (labels are not used by AdaAD's loss); returns the loss tensor."""
    torch = self.torch
    x_adv = self.inner(x)
    self.student_module.train()
    self.opt.zero_grad(set_to_none=True)
    with autocast(self.mode, self.device):
      ori = self.student(x)
      adv = self.student(x_adv)
      with torch.no_grad():
        self.teacher_module.eval()
        t_ori = self.teacher(x)
        t_adv = self.teacher(x_adv)
      loss = (self.alpha * self._kl_mean(adv, t_adv)
              + (1.0 - self.alpha) * self._kl_mean(ori, t_ori))
    loss.backward()
    self.opt.step()
    return loss.detach()
