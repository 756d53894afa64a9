"""The notebooks run top to bottom (small settings) and are committed without outputs."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_four_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == [
        "01_forward_and_backward.ipynb", "02_training.ipynb", "03_what_makes_deep_nets_train.ipynb",
        "04_more_from_the_backward_pass.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # Papermill's convention: the cell tagged "parameters" holds the settings; run small.
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            assert "QUICK = False" in cell.source
            cell.source = cell.source.replace("QUICK = False", "QUICK = True")
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # Every plotting cell produced a figure.
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= {"01": 0, "02": 2, "03": 3, "04": 2}[path.name[:2]]
