"""Model-agnostic, pure, jittable attacks.

Every evaluation attack takes ``logits_fn`` (any function from float32 NHWC
images in [0, 1] to logits), the inputs, the true labels and a PRNG key or an
integer seed.
"""

from kdrobust.attacks.projected import (  # noqa: F401
    as_key, ascent_direction, cw_linf, fgsm, maximize, pgd, pgd_inner,
    project, random_init)
