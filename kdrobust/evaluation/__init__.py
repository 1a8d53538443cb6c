"""Helpers of ``python -m kdrobust.evaluate`` (the entry point is :mod:`kdrobust.evaluate`).

* :mod:`~kdrobust.evaluation.presets`: the named attack presets (FGSM,
  PGD-20, CW-inf, AutoAttack), parsing of ``--attacks`` and ``--eps``.
* :mod:`~kdrobust.evaluation.runner`: :func:`evaluate_arrays`, the whole suite
  on numpy arrays for any JAX logits function (one compilation per attack).
* :mod:`~kdrobust.evaluation.masking`: :func:`check_warnings`, the
  gradient-masking signs as a pure function of a results dict.
* :mod:`~kdrobust.evaluation.report`: the terminal table, the JSON file (never
  overwritten by accident) and the optional plot.
"""

from __future__ import annotations
