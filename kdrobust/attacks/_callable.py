"""Let ``kdrobust.attacks.autoattack(...)`` call the function while the name stays the module.

``apgd``, ``square`` and ``autoattack`` are both submodules and the public
functions of those modules. Python binds the package attribute to the
submodule, so the public call ``kdrobust.attacks.autoattack(logits_fn, x, y,
eps=...)`` would otherwise hit a module. Each of these modules ends with
``make_callable(__name__, fn)``: calling the module calls ``fn``, and its other
names (``autoattack.version_config``, ``apgd.apgd_single_run``) stay reachable.
"""

from __future__ import annotations

import inspect
import sys
import types


def make_callable(module_name: str, fn) -> None:
  module = sys.modules[module_name]

  class _CallableModule(types.ModuleType):
    __doc__ = module.__doc__

    def __call__(self, *args, **kwargs):
      return fn(*args, **kwargs)

  module.__class__ = _CallableModule
  # inspect.signature(module) shows fn's (e.g. its precision= keyword).
  module.__signature__ = inspect.signature(fn)
