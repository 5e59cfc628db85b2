"""notebooks/tutorial.ipynb runs from top to bottom on vlmflow-tiny and draws its figures.

The notebook is stored without outputs; here it is executed in a fresh kernel in a temporary
folder (nbclient), as a reader would run it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "tutorial.ipynb"


def _code_cells(notebook: object) -> list[dict]:
    return [c for c in notebook.cells if c.cell_type == "code"]  # type: ignore[attr-defined]


def test_stored_notebook_has_no_outputs() -> None:
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    cells = _code_cells(notebook)
    assert cells and all(c.outputs == [] and c.execution_count is None for c in cells)


def test_tutorial_runs_and_draws_its_figures(tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    try:
        client.execute()
    except Exception as err:  # nbclient's CellExecutionError names the cell and the traceback
        pytest.fail(f"the tutorial failed: {err}", pytrace=False)
    cells = _code_cells(notebook)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
    outputs = [o for c in cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    # the fractions plot, the attention map, and the report's figures of the run
    assert len(figures) >= 3, [o.get("data", {}).keys() for o in outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "'image':" in text  # the role counts were printed
    assert "report.html" in text
