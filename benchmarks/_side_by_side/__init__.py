"""Helpers of ``benchmarks/gpu_side_by_side.py`` (issue 11 item 5); not a public API.

Modules: ``common`` (environment, wheels, budget, timing, tables), ``nets``
(identical JAX / PyTorch ResNet-18 and WRN-34-10), ``steps`` (the AdaAD train
step on both sides), and the sections: ``sec_device`` (A, B), ``sec_train``
(C, D), ``sec_eval`` (E), ``sec_attacks`` (F, G).
"""
