"""Docstrings, comments and docs cite what a user has (issue 13, item 3).

kdrobust was written from internal research notes (``methods.md``,
``methods_next.md``, ``attacks.md``, ``anchors.md``, ``environment.md`` and paths
under ``../shared``) that are not in the repository. What ships must cite the paper,
the official code (``repo@commit:path``) or the repository's own ``docs/``: this
test fails on any mention of those notes in kdrobust/, configs/, launch/,
benchmarks/, tests/ (this file excepted), README.md or docs/. A name that becomes a real page ``docs/<name>``
is allowed again. Runtime: about 2 s.
"""

import os
import re

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ROOTS = ("kdrobust", "configs", "launch", "benchmarks", "tests", "docs", "README.md")
_NOTES = ("methods.md", "methods_next.md", "attacks.md", "anchors.md", "environment.md")
_PATHS = ("../shared", "shared/research")


def _files():
  for root in _ROOTS:
    path = os.path.join(_REPO, root)
    if os.path.isfile(path):
      yield path
      continue
    for d, dirs, names in os.walk(path):
      dirs[:] = [x for x in dirs if x != "__pycache__" and not x.startswith(".")]
      for n in names:
        if os.path.join(d, n) == os.path.abspath(__file__):
          continue  # names the notes to find them
        if n.endswith((".py", ".md", ".sh", ".txt", ".cfg", ".toml", ".yaml", ".json", ".ipynb")):
          yield os.path.join(d, n)


def _pattern():
  notes = [n for n in _NOTES if not os.path.exists(os.path.join(_REPO, "docs", n))]
  alternatives = [r"(?<![\w.-])" + re.escape(n) for n in notes]
  alternatives += [re.escape(p) for p in _PATHS]
  return re.compile("|".join(alternatives))


def internal_citations(text: str) -> list[str]:
  return _pattern().findall(text)


def test_the_pattern_finds_what_it_should():
  assert internal_citations("(methods.md section 3.4)") == ["methods.md"]
  assert internal_citations("see ``attacks.md`` P7 and methods_next.md A1") == [
      "attacks.md", "methods_next.md"]
  assert internal_citations("--source ../shared/data/x.tar.gz") == ["../shared"]
  assert internal_citations("(docs/fidelity.md, ARD; docs/evaluation.md)") == []
  assert internal_citations("my_methods.md") == []


def test_no_file_a_user_has_cites_the_internal_notes():
  found = []
  for path in _files():
    with open(path, encoding="utf-8", errors="replace") as f:
      for i, line in enumerate(f, 1):
        for hit in internal_citations(line):
          found.append(f"{os.path.relpath(path, _REPO)}:{i}: {hit}: {line.strip()[:100]}")
  assert not found, ("Cite the paper, the official code (repo@commit:path) or docs/ "
                     "instead of the internal notes:\n" + "\n".join(found))
