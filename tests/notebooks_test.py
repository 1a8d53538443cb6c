"""The notebooks in colabs/ run top to bottom, and their committed copies show their outputs.

* :func:`test_notebook_executes` runs each notebook headlessly with nbclient (kernel
  ``python3``) in a fresh temporary ``colabs/`` directory, on a copy: the committed file is
  never written. Any cell error fails the test (nbclient's ``CellExecutionError``, which names
  the cell and the traceback). The kernel gets this process's environment without the
  8-simulated-devices ``XLA_FLAGS`` of conftest.py, as a user's kernel would.
* :func:`test_committed_notebook_has_outputs` checks the committed files: every code cell was
  executed, in order, with no error output and no absolute path of the machine that ran it;
  the notebooks that draw (:data:`FIGURES`) hold at least one PNG. After editing a notebook,
  ``python colabs/refresh_outputs.py NAME`` executes it and saves it with its outputs.

Runtime: the four executions used about 5 min of CPU time in all (tour 1.5-2, attacks 1.5,
the other two 0.5 each); measured 7 min of wall time on 2 cores shared with a load of about 9,
so about 3-5 min on 2 idle cores. The output checks take under a second.
"""

import json
import os
import pathlib
import re
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLABS = ROOT / "colabs"
NOTEBOOKS = sorted(p.name for p in COLABS.glob("*.ipynb"))
REQUIRED = ("tour.ipynb", "attacks.ipynb", "losses_and_conversion.ipynb",
            "metrics_and_checkpoints.ipynb")
FIGURES = ("tour.ipynb", "attacks.ipynb", "metrics_and_checkpoints.ipynb")
CELL_TIMEOUT_S = 600
# Paths of the machine that executed a notebook must not be committed in its outputs.
MACHINE_PATH = re.compile(r"(/tmp/|/home/|/root/|/work/|/Users/|[A-Za-z]:\\Users)")


def _load(name):
  with open(COLABS / name, encoding="utf-8") as f:
    return json.load(f)


def _text(output) -> str:
  parts = [output.get("text", "")]
  for mime in ("text/plain", "text/html"):
    parts.append(output.get("data", {}).get(mime, ""))
  parts += output.get("traceback", [])
  return "".join("".join(p) if isinstance(p, list) else p for p in parts)


def test_the_four_notebooks_exist():
  missing = sorted(set(REQUIRED) - set(NOTEBOOKS))
  assert not missing, f"colabs/ lacks {missing}; it holds {NOTEBOOKS}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_outputs(name):
  nb = _load(name)
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert code, f"{name} has no code cell"
  counts = [c.get("execution_count") for c in code]
  unexecuted = [i for i, n in enumerate(counts) if n is None]
  assert not unexecuted, (f"{name}: code cells {unexecuted} were not executed before "
                         "committing (python colabs/refresh_outputs.py)")
  assert counts == sorted(counts) and len(set(counts)) == len(counts), (
      f"{name}: execution counts {counts} are not one top-to-bottom run")
  first = "".join(code[0]["source"])
  assert "pip install" in first and "find_spec(\"kdrobust\")" in first, (
      f"{name}: the first code cell must install kdrobust when it is missing")
  pngs = 0
  for i, cell in enumerate(code):
    for out in cell.get("outputs", []):
      assert out.get("output_type") != "error", f"{name}: code cell {i} has an error output"
      found = MACHINE_PATH.search(_text(out))
      assert not found, f"{name}: code cell {i} output holds a machine path ({found.group(0)}...)"
      pngs += "image/png" in out.get("data", {})
  if name in FIGURES:
    assert pngs >= 1, f"{name}: no figure (image/png output) in the committed notebook"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  committed = (COLABS / name).read_bytes()
  work = tmp_path / "colabs"
  work.mkdir()
  shutil.copy(COLABS / name, work / name)
  nb = nbformat.read(work / name, as_version=4)
  env = dict(os.environ)
  flags = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                   if not f.startswith("--xla_force_host_platform_device_count"))
  env["XLA_FLAGS"] = flags
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": str(work)}})
  client.execute(env=env)  # raises CellExecutionError on the first failing cell
  errors = [c for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors
  stray = sorted(p.name for p in work.iterdir() if p.name not in (name, "kdrobust_nb_runs"))
  assert not stray, f"{name} wrote {stray} in its working directory, outside kdrobust_nb_runs/"
  assert (COLABS / name).read_bytes() == committed, f"executing {name} changed the committed file"
