"""Model-agnostic, pure, jittable attacks.

Every evaluation attack takes ``logits_fn`` (any function from float32 NHWC
images in [0, 1] to logits), the inputs, the true labels and a PRNG key or an
integer seed, and ``precision=`` ('highest' by default, 'tensorfloat32' or
'bfloat16'): the matmul precision the attack traces under, whatever the
caller's context (attacks/_precision.py).
"""

from kdrobust.attacks._precision import PRECISIONS, check_precision  # noqa: F401
from kdrobust.attacks.projected import (  # noqa: F401
    as_key, ascent_direction, cw_linf, fgsm, maximize, pgd, pgd_inner,
    project, random_init)
# AutoAttack and its attacks. ``apgd``, ``square`` and ``autoattack`` are
# submodules that are also callable (attacks/_callable.py):
# ``kdrobust.attacks.autoattack(logits_fn, x, y, eps=...)`` runs AutoAttack and
# ``kdrobust.attacks.autoattack.version_config`` reaches the module.
from kdrobust.attacks import apgd, autoattack, fab, square, transfer  # noqa: F401,E402
from kdrobust.attacks.apgd import apgd_single_run, apgd_targeted  # noqa: F401,E402
from kdrobust.attacks.autoattack import AutoAttackResult  # noqa: F401,E402
from kdrobust.attacks.fab import fab_single_run, fab_targeted  # noqa: F401,E402
from kdrobust.attacks.square import square_single_run  # noqa: F401,E402
from kdrobust.attacks.transfer import (  # noqa: F401,E402
    transfer_attack, transferability_matrix)
