"""The commands print what a user needs, not the backends' noise (issue 13, item 3).

A subprocess with INFO logging on (as in Colab, or under absl) runs the offline
``python -m kdrobust.data.prepare digits`` entry point and then starts JAX, as every
entry point does after importing kdrobust. Neither JAX's INFO "Unable to initialize
backend 'tpu'" line (logged on every machine without a TPU) nor TFDS's "Downloading and
preparing dataset" (nothing is downloaded) may appear. ``KDROBUST_DEBUG=1`` keeps JAX's
line: the control run shows that this test sees it when it is there. ``kdrobust.main``'s
flag parsing (run twice, as a notebook reruns a command) may not print absl's INFO
"unparse_flags() called" line either. Runtime: about 8 s.
"""

import os
import subprocess
import sys

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from kdrobust.data import prepare
assert prepare.main(["digits", "--data_dir", sys.argv[1]]) == 0
import jax
print("backend:", jax.default_backend())
"""

_BACKEND_NOISE = "Unable to initialize backend"
_DOWNLOAD_NOISE = ("Downloading and preparing dataset", "downloaded and prepared to")


def _run(data_dir, debug):
  p = subprocess.run(
      [sys.executable, "-c", _SCRIPT, str(data_dir)], cwd=_REPO, capture_output=True,
      text=True, timeout=120, env={**os.environ, "KDROBUST_DEBUG": debug})
  assert p.returncode == 0, p.stderr[-3000:]
  return p.stdout + p.stderr


def test_prepare_and_jax_start_print_no_backend_or_download_noise(tmp_path):
  out = _run(tmp_path / "tfds", debug="")
  assert "Prepared digits in" in out  # what the user needs is still printed
  assert "backend: " in out  # JAX chose its backend itself (JAX_PLATFORMS not forced)
  for line in (_BACKEND_NOISE,) + _DOWNLOAD_NOISE:
    assert line not in out, f"{line!r} printed:\n{out[-2000:]}"


def test_debug_keeps_the_backend_line(tmp_path):
  out = _run(tmp_path / "tfds", debug="1")
  if "backend: tpu" in out:
    pytest.skip("on a TPU host JAX has no absent backend to report")
  assert _BACKEND_NOISE in out, out[-2000:]
  for line in _DOWNLOAD_NOISE:  # dropped by the offline builders themselves
    assert line not in out, f"{line!r} printed:\n{out[-2000:]}"


_MAIN_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from absl import flags
from kdrobust import main
for _ in range(2):  # a first run, then an in-process rerun (a notebook cell run again)
  main._parse_flags(["--config=configs/quickstart.py", "--workdir=" + sys.argv[1]])
print("workdir:", flags.FLAGS.workdir, file=sys.stderr, flush=True)
flags.FLAGS.unparse_flags()  # control: absl's own call logs the line
"""
_UNPARSE_NOISE = "unparse_flags() called"


def test_main_flag_parsing_prints_no_unparse_line(tmp_path):
  p = subprocess.run([sys.executable, "-c", _MAIN_SCRIPT, str(tmp_path / "run")], cwd=_REPO,
                     capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-3000:]
  marker = f"workdir: {tmp_path / 'run'}\n"  # the flags were parsed (stderr, in order)
  before, found, control = p.stderr.partition(marker)
  assert found, p.stderr[-2000:]
  assert _UNPARSE_NOISE in control, f"no control line, so this test cannot see it:\n{control}"
  assert _UNPARSE_NOISE not in before, f"kdrobust.main printed {_UNPARSE_NOISE!r}:\n{before}"
