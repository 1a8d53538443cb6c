"""The architecture zoo: importing this module registers every architecture.

Registered names (see each module's docstring for layouts and variants):

* ``resnet18``, ``resnet34``, ``resnet50`` (CIFAR stem) and
  ``resnet18_imagenet``, ``resnet34_imagenet``, ``resnet50_imagenet``;
* ``preact_resnet18`` (``variant`` 'standard' / 'kuangliu' / 'wong' / 'dm');
* ``wrn`` (kwargs ``depth``, ``width``, ``activation``, ``variant``),
  ``wrn28_10``, ``wrn34_10``, ``wrn34_20``, ``wrn70_16`` (``variant``
  'standard' = RobustBench/TRADES ``WideResNet``, 'dm' = ``DMWideResNet``);
* ``mobilenet_v2`` (CIFAR);
* ``vit_ti``, ``vit_s``, ``vit_b`` (kwargs ``patch_size``, ``image_size``).

Every model takes ``mean``/``std`` (``None``: no normalisation), ``dtype``
('float32' / 'bfloat16' compute; parameters stay float32; logits float32) and
``head_slots`` (DARHT multi-slot head, ``kdrobust.models.layers.classifier_head``).
"""

from __future__ import annotations

from kdrobust.models import mobilenet_v2  # noqa: F401
from kdrobust.models import preact_resnet  # noqa: F401
from kdrobust.models import resnet  # noqa: F401
from kdrobust.models import vit  # noqa: F401
from kdrobust.models import wide_resnet  # noqa: F401
