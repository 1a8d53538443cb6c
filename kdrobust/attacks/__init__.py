"""Model-agnostic, pure, jittable attacks.

Every evaluation attack takes ``logits_fn`` (any function from float32 NHWC
images in [0, 1] to logits), the inputs, the true labels and a PRNG key or an
integer seed.
"""

from kdrobust.attacks.projected import (  # noqa: F401
    as_key, ascent_direction, cw_linf, fgsm, maximize, pgd, pgd_inner,
    project, random_init)
from kdrobust.attacks.apgd import (  # noqa: F401
    apgd, apgd_single_run, apgd_targeted)
from kdrobust.attacks.autoattack import (  # noqa: F401
    AutoAttackResult, autoattack)
from kdrobust.attacks.fab import fab, fab_single_run, fab_targeted  # noqa: F401
from kdrobust.attacks.square import square, square_single_run  # noqa: F401
from kdrobust.attacks.transfer import (  # noqa: F401
    transfer_attack, transferability_matrix)
