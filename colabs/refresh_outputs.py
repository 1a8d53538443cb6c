"""Re-executes notebooks of colabs/ and saves them with their outputs (figures included).

    python colabs/refresh_outputs.py                 # every colabs/*.ipynb
    python colabs/refresh_outputs.py tour attacks    # some of them

Each notebook runs top to bottom with nbclient (kernel ``python3``) in a fresh temporary
``colabs/`` directory, so nothing from an earlier run is reused, then is written back over the
committed file with the temporary directory's path replaced by ``.`` in every output (the
committed outputs must not hold paths of the machine that ran them; tests/notebooks_test.py
checks this). A cell error stops with nbclient's ``CellExecutionError`` and writes nothing.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile
import time

COLABS = pathlib.Path(__file__).resolve().parent


def _strip(text: str, paths: list[str]) -> str:
  for p in paths:
    text = text.replace(p + "/", "").replace(p, ".")
  return text


def refresh(name: str) -> float:
  """Executes ``colabs/<name>.ipynb`` in a temporary directory and saves it; returns seconds."""
  import nbformat  # pylint: disable=g-import-not-at-top
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  path = COLABS / f"{name}.ipynb"
  if not path.exists():
    valid = ", ".join(sorted(p.stem for p in COLABS.glob("*.ipynb")))
    raise SystemExit(f"No notebook colabs/{name}.ipynb; valid: {valid}")
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="kdrobust_nb_"))
  try:
    work = tmp / "colabs"
    work.mkdir()
    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(work)}}).execute()
    seconds = time.time() - t0
    paths = [str(work), str(work.resolve()), str(tmp), str(tmp.resolve())]
    for cell in nb.cells:
      for out in cell.get("outputs", []):
        if "text" in out:
          out["text"] = _strip(out["text"], paths)
        for mime in ("text/plain", "text/html"):
          if mime in out.get("data", {}):
            out["data"][mime] = _strip(out["data"][mime], paths)
    nbformat.write(nb, path)
    return seconds
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
  names = argv or sorted(p.stem for p in COLABS.glob("*.ipynb"))
  for name in names:
    print(f"{name}: executed in {refresh(name):.0f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
