"""The notebooks in notebooks/ run from top to bottom (nbclient, the venv's python3
kernel, CPU) and are committed with their outputs.

To refresh the committed outputs after a change:
  JATTN_WRITE_NOTEBOOKS=1 .venv/bin/python -m pytest tests/test_notebooks.py
"""

from __future__ import annotations

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
  names = {p.name for p in NOTEBOOKS}
  assert {"01_quickstart.ipynb", "02_custom_variants.ipynb", "03_paged_serving.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_committed_with_outputs(path):
  nb = nbformat.read(path, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(c.execution_count is not None for c in code), \
      f"{path.name}: execute it and commit the outputs"
  errors = [o for c in code for o in c.outputs if o.output_type == "error"]
  assert not errors, f"{path.name}: committed with an error output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  monkeypatch.delenv("JATTN_LOG", raising=False)
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(path.parent)}})
  client.execute()  # raises CellExecutionError with the failing cell's traceback
  if os.environ.get("JATTN_WRITE_NOTEBOOKS") == "1":
    for i, cell in enumerate(nb.cells):   # stable ids and no timings: clean diffs
      cell["id"] = f"cell-{i:02d}"
      cell.get("metadata", {}).pop("execution", None)
    nbformat.write(nb, path)
