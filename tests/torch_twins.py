"""PyTorch twins of the zoo architectures, for the conversion parity tests.

Written from the published architecture descriptions, with the *same
state_dict key names* as the layouts RobustBench (and kuangliu/pytorch-cifar,
torchvision) publish, so a twin's ``state_dict()`` is what a real checkpoint
looks like. Widths and depths are parameters so tests can run small instances
of the very same code paths. Inputs are NCHW in [0, 1]; normalisation (if any)
happens inside, as in RobustBench.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def _conv3(cin, cout, stride=1, padding=1):
  return nn.Conv2d(cin, cout, 3, stride=stride, padding=padding, bias=False)


def _conv1(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, 1, stride=stride, padding=0, bias=False)


def _act(name):
  return {"relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU}[name]()


class _Normalized(nn.Module):
  """Base: optional in-model normalisation from buffers named ``buf_names``."""

  def _init_norm(self, mean, std, buf_names=("mu", "sigma"), shape=(1, 3, 1, 1)):
    self._buf_names = buf_names if mean is not None else None
    if mean is not None:
      self.register_buffer(buf_names[0], torch.tensor(mean, dtype=torch.float32).view(*shape))
      self.register_buffer(buf_names[1], torch.tensor(std, dtype=torch.float32).view(*shape))

  def _norm(self, x):
    if self._buf_names is None:
      return x
    return (x - getattr(self, self._buf_names[0])) / getattr(self, self._buf_names[1])


# ---------------------------------------------------------------- ResNet (kuangliu / torchvision)

class TBasic(nn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride, sc_name):
    super().__init__()
    self.conv1 = _conv3(cin, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self._sc_name = sc_name
    sc = nn.Sequential()
    if stride != 1 or cin != planes:
      sc = nn.Sequential(_conv1(cin, planes, stride), nn.BatchNorm2d(planes))
    setattr(self, sc_name, sc)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + getattr(self, self._sc_name)(x))


class TBottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride, sc_name):
    super().__init__()
    cout = 4 * planes
    self.conv1 = _conv1(cin, planes)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3(planes, planes, stride)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = _conv1(planes, cout)
    self.bn3 = nn.BatchNorm2d(cout)
    self._sc_name = sc_name
    sc = nn.Sequential()
    if stride != 1 or cin != cout:
      sc = nn.Sequential(_conv1(cin, cout, stride), nn.BatchNorm2d(cout))
    setattr(self, sc_name, sc)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return F.relu(out + getattr(self, self._sc_name)(x))


class TResNet(_Normalized):
  """``imagenet=False``: kuangliu CIFAR ResNet (``linear``, ``shortcut``);
  ``imagenet=True``: torchvision ResNet (7x7 stem, max-pool, ``fc``, ``downsample``)."""

  def __init__(self, block="basic", num_blocks=(2, 2, 2, 2), num_classes=10, width=64,
               imagenet=False, mean=None, std=None):
    super().__init__()
    self._init_norm(mean, std)
    blk = TBasic if block == "basic" else TBottleneck
    self.imagenet = imagenet
    if imagenet:
      self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    else:
      self.conv1 = _conv3(3, width)
    self.bn1 = nn.BatchNorm2d(width)
    if imagenet:
      self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    cin = width
    for s, n in enumerate(num_blocks):
      layers = []
      for i in range(n):
        stride = 2 if (s > 0 and i == 0) else 1
        layers.append(blk(cin, width * 2 ** s, stride, "downsample" if imagenet else "shortcut"))
        cin = width * 2 ** s * blk.expansion
      setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
    head = nn.Linear(cin, num_classes)
    setattr(self, "fc" if imagenet else "linear", head)
    self._n = len(num_blocks)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(self._norm(x))))
    if self.imagenet:
      out = self.maxpool(out)
    for s in range(self._n):
      out = getattr(self, f"layer{s + 1}")(out)
    out = out.mean(dim=(2, 3))
    return (self.fc if self.imagenet else self.linear)(out)


# ---------------------------------------------------------------- PreActResNet

class TPreActBlock(nn.Module):
  """``from_preact``: kuangliu / RobustBench ``PreActBlockV2``; else RobustBench ``PreActBlock``."""

  def __init__(self, cin, planes, stride, from_preact):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = _conv3(cin, planes, stride)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3(planes, planes)
    self.from_preact = from_preact
    if stride != 1 or cin != planes:
      self.shortcut = nn.Sequential(_conv1(cin, planes, stride))

  def forward(self, x):
    out = F.relu(self.bn1(x))
    if hasattr(self, "shortcut"):
      sc = self.shortcut(out if self.from_preact else x)
    else:
      sc = x
    out = self.conv1(out)
    out = self.conv2(F.relu(self.bn2(out)))
    return out + sc


class TPreActResNet(_Normalized):
  """RobustBench ``PreActResNet`` (optional ``bn`` before the linear head)."""

  def __init__(self, num_blocks=(2, 2, 2, 2), num_classes=10, width=64, from_preact=True,
               bn_before_fc=False, mean=None, std=None):
    super().__init__()
    self._init_norm(mean, std)
    self.conv1 = _conv3(3, width)
    cin = width
    for s, n in enumerate(num_blocks):
      layers = []
      for i in range(n):
        layers.append(TPreActBlock(cin, width * 2 ** s, 2 if (s > 0 and i == 0) else 1,
                                   from_preact))
        cin = width * 2 ** s
      setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
    self.bn_before_fc = bn_before_fc
    if bn_before_fc:
      self.bn = nn.BatchNorm2d(cin)
    self.linear = nn.Linear(cin, num_classes)
    self._n = len(num_blocks)

  def forward(self, x):
    out = self.conv1(self._norm(x))
    for s in range(self._n):
      out = getattr(self, f"layer{s + 1}")(out)
    if self.bn_before_fc:
      out = F.relu(self.bn(out))
    return self.linear(out.mean(dim=(2, 3)))


def _same_pad(x, stride):
  # TF "SAME" for a 3x3 kernel on even sizes: (1,1) at stride 1, (0,1) at stride 2.
  return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


class TDMPreActBlock(nn.Module):

  def __init__(self, cin, planes, stride, act):
    super().__init__()
    self._stride = stride
    self.batchnorm_0 = nn.BatchNorm2d(cin)
    self.relu_0 = _act(act)
    self.conv_2d_1 = _conv3(cin, planes, stride, padding=0)
    self.batchnorm_1 = nn.BatchNorm2d(planes)
    self.relu_1 = _act(act)
    self.conv_2d_2 = _conv3(planes, planes)
    self.has_shortcut = stride != 1 or cin != planes
    if self.has_shortcut:
      self.shortcut = _conv3(cin, planes, stride, padding=0)

  def forward(self, x):
    out = self.relu_0(self.batchnorm_0(x))
    sc = self.shortcut(_same_pad(x, self._stride)) if self.has_shortcut else x
    out = self.conv_2d_1(_same_pad(out, self._stride))
    out = self.conv_2d_2(self.relu_1(self.batchnorm_1(out)))
    return out + sc


class TDMPreActResNet(_Normalized):
  """RobustBench ``DMPreActResNet`` (``mean``/``std`` buffers of shape (3, 1, 1))."""

  def __init__(self, num_blocks=(2, 2, 2, 2), num_classes=10, width=64, act="swish",
               mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)):
    super().__init__()
    self._init_norm(mean, std, ("mean", "std"), (3, 1, 1))
    self.conv_2d = _conv3(3, width)
    cin = width
    for s, n in enumerate(num_blocks):
      layers = []
      for i in range(n):
        layers.append(TDMPreActBlock(cin, width * 2 ** s, 2 if (s > 0 and i == 0) else 1, act))
        cin = width * 2 ** s
      setattr(self, f"layer_{s}", nn.Sequential(*layers))
    self.batchnorm = nn.BatchNorm2d(cin)
    self.relu = _act(act)
    self.logits = nn.Linear(cin, num_classes)
    self._n = len(num_blocks)

  def forward(self, x):
    out = self.conv_2d(self._norm(x))
    for s in range(self._n):
      out = getattr(self, f"layer_{s}")(out)
    out = self.relu(self.batchnorm(out))
    return self.logits(out.mean(dim=(2, 3)))


# ---------------------------------------------------------------- WideResNet

class TWideBlock(nn.Module):
  """RobustBench/TRADES ``BasicBlock`` of ``WideResNet``."""

  def __init__(self, cin, cout, stride, act):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.relu1 = _act(act)
    self.conv1 = _conv3(cin, cout, stride)
    self.bn2 = nn.BatchNorm2d(cout)
    self.relu2 = _act(act)
    self.conv2 = _conv3(cout, cout)
    self.equal = cin == cout
    self.convShortcut = None if self.equal else _conv1(cin, cout, stride)  # pylint: disable=invalid-name

  def forward(self, x):
    pre = self.relu1(self.bn1(x))
    out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
    return (x if self.equal else self.convShortcut(pre)) + out


class TNetworkBlock(nn.Module):

  def __init__(self, n, cin, cout, stride, act):
    super().__init__()
    self.layer = nn.Sequential(*[TWideBlock(cin if i == 0 else cout, cout,
                                            stride if i == 0 else 1, act) for i in range(n)])

  def forward(self, x):
    return self.layer(x)


class TWideResNet(_Normalized):
  """RobustBench ``WideResNet`` (``sub_block1`` built but unused, as there)."""

  def __init__(self, depth=28, widen_factor=10, num_classes=10, sub_block1=False, act="relu",
               mean=None, std=None):
    super().__init__()
    self._init_norm(mean, std)
    n = (depth - 4) // 6
    ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    self.conv1 = _conv3(3, ch[0])
    self.block1 = TNetworkBlock(n, ch[0], ch[1], 1, act)
    if sub_block1:
      self.sub_block1 = TNetworkBlock(n, ch[0], ch[1], 1, act)
    self.block2 = TNetworkBlock(n, ch[1], ch[2], 2, act)
    self.block3 = TNetworkBlock(n, ch[2], ch[3], 2, act)
    self.bn1 = nn.BatchNorm2d(ch[3])
    self.relu = _act(act)
    self.fc = nn.Linear(ch[3], num_classes)

  def forward(self, x):
    out = self.conv1(self._norm(x))
    out = self.block3(self.block2(self.block1(out)))
    out = self.relu(self.bn1(out))
    return self.fc(out.mean(dim=(2, 3)))


class TDMBlock(nn.Module):

  def __init__(self, cin, cout, stride, act):
    super().__init__()
    self.batchnorm_0 = nn.BatchNorm2d(cin)
    self.relu_0 = _act(act)
    self.conv_0 = _conv3(cin, cout, stride, padding=0)
    self.batchnorm_1 = nn.BatchNorm2d(cout)
    self.relu_1 = _act(act)
    self.conv_1 = _conv3(cout, cout)
    self.has_shortcut = cin != cout
    self.shortcut = _conv1(cin, cout, stride) if self.has_shortcut else None
    self._stride = stride

  def forward(self, x):
    pre = self.relu_0(self.batchnorm_0(x))
    out = self.conv_0(_same_pad(pre, self._stride))
    out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
    return (self.shortcut(pre) if self.has_shortcut else x) + out


class TDMBlockGroup(nn.Module):

  def __init__(self, n, cin, cout, stride, act):
    super().__init__()
    self.block = nn.Sequential(*[TDMBlock(cin if i == 0 else cout, cout,
                                          stride if i == 0 else 1, act) for i in range(n)])

  def forward(self, x):
    return self.block(x)


class TDMWideResNet(_Normalized):
  """RobustBench ``DMWideResNet`` (``mean``/``std`` buffers of shape (3, 1, 1))."""

  def __init__(self, num_classes=10, depth=28, width=10, act="swish",
               mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)):
    super().__init__()
    self._init_norm(mean, std, ("mean", "std"), (3, 1, 1))
    n = (depth - 4) // 6
    ch = [16, 16 * width, 32 * width, 64 * width]
    self.init_conv = _conv3(3, ch[0])
    self.layer = nn.Sequential(TDMBlockGroup(n, ch[0], ch[1], 1, act),
                               TDMBlockGroup(n, ch[1], ch[2], 2, act),
                               TDMBlockGroup(n, ch[2], ch[3], 2, act))
    self.batchnorm = nn.BatchNorm2d(ch[3])
    self.relu = _act(act)
    self.logits = nn.Linear(ch[3], num_classes)

  def forward(self, x):
    out = self.layer(self.init_conv(self._norm(x)))
    out = self.relu(self.batchnorm(out))
    return self.logits(out.mean(dim=(2, 3)))


# ---------------------------------------------------------------- MobileNetV2 (kuangliu)

class TInvRes(nn.Module):

  def __init__(self, cin, cout, expansion, stride):
    super().__init__()
    planes = expansion * cin
    self.stride = stride
    self.conv1 = _conv1(cin, planes)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = _conv1(planes, cout)
    self.bn3 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Sequential()
    if stride == 1 and cin != cout:
      self.shortcut = nn.Sequential(_conv1(cin, cout), nn.BatchNorm2d(cout))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return out + self.shortcut(x) if self.stride == 1 else out


class TMobileNetV2(_Normalized):
  CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
         (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

  def __init__(self, num_classes=10, cfg=CFG, mean=None, std=None):
    super().__init__()
    self._init_norm(mean, std)
    self.conv1 = _conv3(3, 32)
    self.bn1 = nn.BatchNorm2d(32)
    blocks, cin = [], 32
    for e, cout, n, s in cfg:
      for i in range(n):
        blocks.append(TInvRes(cin, cout, e, s if i == 0 else 1))
        cin = cout
    self.layers = nn.Sequential(*blocks)
    self.conv2 = _conv1(cin, 1280)
    self.bn2 = nn.BatchNorm2d(1280)
    self.linear = nn.Linear(1280, num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(self._norm(x))))
    out = F.relu(self.bn2(self.conv2(self.layers(out))))
    return self.linear(out.mean(dim=(2, 3)))


# ---------------------------------------------------------------- helpers

@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, image_size: int = 32) -> nn.Module:
  """Random weights and BN statistics; returns the model in eval mode.

  Conv/linear weights are He-normal, BN affine parameters random around
  (1, 0). Running statistics are first calibrated on a random batch (so the
  activations and logits stay O(1) at any depth) and then perturbed, so they
  are far from the (0, 1) defaults and a wrong BN mapping cannot go unnoticed.
  """
  g = torch.Generator().manual_seed(seed)
  bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  for m in model.modules():
    if isinstance(m, (nn.Conv2d, nn.Linear)):
      fan_in = m.weight[0].numel()
      m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
      if m.bias is not None:
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
  for m in bns:
    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    m.momentum = 1.0  # running stats := the calibration batch's stats.
  model.train()
  model(torch.rand((8, 3, image_size, image_size), generator=g))
  for m in bns:
    m.momentum = 0.1
    m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
    m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) * 0.4 + 0.8)
    m.num_batches_tracked.fill_(7)
  return model.eval()
