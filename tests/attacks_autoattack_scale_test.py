"""AutoAttack at scale (issue 11 item 3): devices, compile counts, buckets, chunk size, cache.

Runs on conftest's 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``): chunks split over
8 devices must give exactly the one-device result (the kernels are
per-example; random draws happen in the global prepare kernels), with no
collective in the sharded APGD/FAB kernels; a whole AutoAttack run compiles
a bounded number of executables and a second run with another epsilon and
fewer points compiles none. Runtime: about 25 s on 2 CPU cores.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdrobust import config_lib, evaluate
from kdrobust.attacks import apgd as apgd_lib
from kdrobust.attacks import autoattack as aa_lib
from kdrobust.attacks import fab as fab_lib
from kdrobust.evaluation import compilation_cache

N = 24
_RNG = np.random.RandomState(0)
_W1 = jnp.asarray(_RNG.randn(6 * 6 * 3, 16).astype(np.float32) * 0.5)
_W2 = jnp.asarray(_RNG.randn(16, 10).astype(np.float32))
X = _RNG.rand(N, 6, 6, 3).astype(np.float32)


def _logits(x):
  """A tiny MLP (XLA:CPU compiles it in a fraction of a convolution's time)."""
  return jnp.tanh(x.reshape(x.shape[0], -1) @ _W1) @ _W2


Y = np.asarray(jax.jit(_logits)(X)).argmax(-1)
Y[::5] = (Y[::5] + 1) % 10  # a few clean mistakes
AA_SMALL = dict(n_iter=3, square_queries=10, apgd_targets=1, fab_targets=1)
COLLECTIVES = re.compile(r"all-reduce|all-gather|collective-permute|all-to-all|reduce-scatter")


def _fresh_fn():
  """A new function object: every kernel traces and compiles anew for it."""
  return lambda x: _logits(x)  # noqa: E731  (a new identity per call)


def test_eight_devices_give_the_one_device_result():
  assert jax.local_device_count() == 8, "conftest's 8 simulated devices are expected"
  mesh = apgd_lib.attack_mesh(8)
  assert apgd_lib.mesh_size(mesh) == 8 and apgd_lib.attack_mesh(1) is None
  fn = _fresh_fn()
  common = dict(eps=8 / 255, batch_size=16, key=3)
  # APGD-T returning every point's best-loss iterate: a full comparison.
  one = apgd_lib.apgd_rounds(fn, X, Y, loss="dlr-targeted", n_iter=3, n_target_classes=1,
                             select="loss", **common)
  eight = apgd_lib.apgd_rounds(fn, X, Y, loss="dlr-targeted", n_iter=3, n_target_classes=1,
                               select="loss", mesh=mesh, **common)
  assert np.abs(one[0] - X).max() > 0  # it moved
  np.testing.assert_allclose(eight[0], one[0], rtol=0, atol=1e-6)
  # The whole cascade with Square (batch-coupled draws; GSPMD-sharded), the clean
  # pass and the re-checks: batch_size and chunk_size multiples of 8.
  kw = dict(eps=8 / 255, version="custom", attacks=["square"], batch_size=8, chunk_size=16,
            config_overrides=AA_SMALL, checks=False)
  r1 = aa_lib.autoattack(fn, X, Y, devices=1, **kw)
  r8 = aa_lib.autoattack(fn, X, Y, devices=8, **kw)
  assert r8.config.devices == 8 and r1.config.devices == 1
  assert r1.robust_accuracy < r1.clean_accuracy  # something was broken
  np.testing.assert_array_equal(r8.robust, r1.robust)
  np.testing.assert_allclose(r8.x_adv, r1.x_adv, rtol=0, atol=1e-6)
  assert r8.stage_accuracy == r1.stage_accuracy


def test_sharded_fab_has_no_collectives_and_matches_one_device():
  mesh = apgd_lib.attack_mesh(8)
  fn = jax.tree_util.Partial(_logits)
  eps = jnp.float32(0.5)  # large: FAB-T succeeds on most points
  static = dict(n_iter=2, norm="linf", targeted=True, alpha_max=0.1, eta=1.05, beta=0.9)
  x, y = apgd_lib.put_rows(X[:16], mesh), apgd_lib.put_rows(Y[:16], mesh)
  compiled = fab_lib.sharded_fab_core(mesh, **static).lower(
      fn, x, y, x, jnp.int32(2), eps).compile()
  assert not COLLECTIVES.findall(compiled.as_text())
  # (GSPMD's own partitioning of the jitted kernel, fab._fab_core_jit on these sharded
  # inputs, has all-gather, all-to-all and collective-permute: checked by hand.)
  eight = compiled(fn, x, y, x, jnp.int32(2), eps)
  one = fab_lib._fab_core_jit(fn, X[:16], Y[:16], X[:16], jnp.int32(2), eps,  # pylint: disable=protected-access
                              **static)
  assert np.asarray(one.success).sum() >= 8
  np.testing.assert_array_equal(np.asarray(eight.success), np.asarray(one.success))
  np.testing.assert_allclose(np.asarray(eight.adv), np.asarray(one.adv), rtol=0, atol=1e-6)


class _Compiles:
  """Counts XLA backend compilations through jax.monitoring."""

  def __init__(self):
    self.n = 0
    self.on = False
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **kwargs):
    del duration, kwargs
    if self.on and event == "/jax/core/compile/backend_compile_duration":
      self.n += 1

  def count(self, f):
    self.n, self.on = 0, True
    try:
      out = f()
    finally:
      self.on = False
    return self.n, out


# Executables of one standard-cascade run with buckets=1 on CPU (host loop), as
# listed by jax.log_compiles: 15 kernels (sanity forward, key derivation, clean
# pass/re-check; APGD-CE prepare/init/step/select; APGD-T prepare/init/step;
# FAB-T prepare/init/step/finish; Square's chunk) plus 11 tiny transfer/convert/
# seed executables: 26 measured alone (fewer after other tests). With the
# default 8 buckets each kernel may compile up to 8 shapes; on accelerators 2.
MAX_COMPILES_FIRST_RUN = 32


def test_autoattack_compile_count_and_no_recompilation():
  counter = _Compiles()
  fn = _fresh_fn()
  kw = dict(version="standard", batch_size=8, chunk_size=16, buckets=1,
            config_overrides=AA_SMALL)
  n1, r1 = counter.count(lambda: aa_lib.autoattack(fn, X, Y, eps=8 / 255, **kw))
  print(f"compilations: first run {n1}")
  assert 0 < n1 <= MAX_COMPILES_FIRST_RUN
  assert r1.config.chunk_size == 16 and r1.config.buckets == 1
  # Another epsilon and fewer points: the same shapes, nothing compiles.
  n2, _ = counter.count(lambda: aa_lib.autoattack(fn, X[:20], Y[:20], eps=4 / 255, **kw))
  assert n2 == 0


def test_buckets_chunk_size_defaults(monkeypatch):
  assert apgd_lib.resolve_buckets(None) == apgd_lib.DEFAULT_BUCKETS == 8  # CPU keeps 8
  assert apgd_lib.ACCELERATOR_BUCKETS == 2
  with pytest.raises(ValueError, match="buckets must be >= 1"):
    apgd_lib.resolve_buckets(0)
  assert apgd_lib.bucket_size(250, 250) == 250
  assert apgd_lib.bucket_size(250, 250, multiple=8) == 256
  assert apgd_lib.bucket_size(3, 250, 2, multiple=8) == 128
  seen = {}

  def fake_stage(name, fn, xs, ys, active, key, cfg, norm, randomized, progress, mesh=None):
    seen[name] = (cfg, apgd_lib.mesh_size(mesh))
    return xs, 0

  monkeypatch.setattr(aa_lib, "_run_stage", fake_stage)
  kw = dict(eps=8 / 255, version="custom", attacks=["apgd-ce"], batch_size=4, checks=False)
  aa_lib.autoattack(_logits, X, Y, devices=2, **kw)
  cfg, n_dev = seen["apgd-ce"]
  assert cfg.chunk_size == 8 and cfg.devices == 2 == n_dev  # batch_size x devices
  aa_lib.autoattack(_logits, X, Y, **kw)
  cfg, n_dev = seen["apgd-ce"]
  assert cfg.devices == 1 == n_dev and cfg.chunk_size == 4  # CPU default: unchanged
  assert cfg.buckets == 8 and cfg.precision == "highest"
  with pytest.raises(ValueError, match="chunk_size must be >= 1"):
    aa_lib.autoattack(_logits, X, Y, eps=8 / 255, chunk_size=0)


def test_compilation_cache_settings(tmp_path, monkeypatch):
  before = jax.config.jax_compilation_cache_dir
  before_min = jax.config.jax_persistent_cache_min_compile_time_secs
  try:
    assert compilation_cache.resolve_dir("none") is None
    assert compilation_cache.resolve_dir("") is None
    assert compilation_cache.enable("none") is None
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert compilation_cache.resolve_dir() == str(tmp_path / "env")
    assert compilation_cache.resolve_dir(str(tmp_path / "x")) == str(tmp_path / "x")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    assert compilation_cache.resolve_dir().endswith("/.cache/kdrobust/jax")
    path = compilation_cache.enable(str(tmp_path / "cache"))
    assert path == str(tmp_path / "cache") and compilation_cache.current_dir() == path
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before_min)
  assert config_lib.base_config().compilation_cache_dir == compilation_cache.DEFAULT_DIR
  args = evaluate.make_parser().parse_args(["--workdir", "w"])
  assert args.compilation_cache_dir == compilation_cache.DEFAULT_DIR
  assert args.precision == "highest"
  with pytest.raises(Exception, match="invalid choice: 'fp8'"):
    evaluate.make_parser().parse_args(["--workdir", "w", "--precision", "fp8"])
