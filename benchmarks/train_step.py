"""PGD-AT train-step throughput, fp32 vs bf16 compute, measured side by side in one run.

    python benchmarks/train_step.py --model resnet18 --batch 128 --steps 20

Synthetic CIFAR-shape data (32x32x3, 10 classes) on every device of the
machine (the batch is sharded over a 'data' mesh), ResNet-18 student,
PGD-10 inner attack (eps 8/255, step 2/255): the same jitted step as
``python -m kdrobust.main``. Compile time is excluded and reported apart;
throughput is the median over timed steps after ``--warmup`` steps, each
fully synchronised with ``block_until_ready``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from kdrobust import config_lib, methods, parallel, train, train_step


def bench(model_name: str, dtype: str, batch: int, steps: int, warmup: int,
          inner_steps: int, unroll: int) -> dict:
  mesh = parallel.make_mesh()
  cfg = config_lib.base_config()
  cfg.model.name, cfg.model.dtype = model_name, dtype
  model = train.build_model(cfg.model, 10, "cifar10")
  method = methods.make("pgd_at", attack={"steps": inner_steps, "unroll": unroll})
  sched = train.make_schedule(cfg.optim, 100, 1)
  tx = train.make_optimizer(cfg.optim, sched)
  state = jax.jit(lambda: train.create_state(model, tx, method, 10, (32, 32, 3), 0),
                  out_shardings=parallel.replicated(mesh))()
  step = train_step.make_train_step(apply_fn=model.apply, method=method, tx=tx,
                                    num_classes=10, num_epochs=1, steps_per_epoch=100,
                                    seed=0, mesh=mesh)
  rng = np.random.default_rng(0)
  local = {"image": rng.random((batch, 32, 32, 3), np.float32),
           "label": rng.integers(0, 10, batch).astype(np.int32)}
  data = parallel.global_batch(mesh, local)
  t0 = time.perf_counter()
  state, m = step(state, (), data)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, m = step(state, (), data)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = step(state, (), data)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  return {"dtype": dtype, "compile_s": compile_s, "step_s": med,
          "steps_per_s": 1 / med, "images_per_s": batch / med}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="resnet18")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--inner_steps", type=int, default=10)
  p.add_argument("--unroll", type=int, default=1, help="lax.fori_loop unroll of the inner attack")
  p.add_argument("--dtypes", default="float32,bfloat16")
  a = p.parse_args()
  dev = jax.devices()[0]
  print(f"device: {jax.device_count()}x {dev.device_kind} ({dev.platform}); jax {jax.__version__}")
  print(f"model {a.model}, batch {a.batch}, PGD-{a.inner_steps} inner attack, unroll {a.unroll}\n")
  print("| compute dtype | compile (s) | step (s, median) | steps/s | images/s |")
  print("| --- | ---: | ---: | ---: | ---: |")
  for dt in a.dtypes.split(","):
    r = bench(a.model, dt, a.batch, a.steps, a.warmup, a.inner_steps, a.unroll)
    print(f"| {dt} | {r['compile_s']:.1f} | {r['step_s']:.3f} | {r['steps_per_s']:.2f} | "
          f"{r['images_per_s']:.0f} |", flush=True)


if __name__ == "__main__":
  main()
