"""The quickstart notebook runs top to bottom and shows what it claims (the numbered notebooks are
executed and checked by tests/test_notebooks_execute.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import ROOT

NOTEBOOKS = [ROOT / "notebooks" / "quickstart.ipynb"]


def _execute(path: Any) -> Any:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    return nb


def _last_json_line(nb: Any) -> dict[str, Any]:
    """The JSON line the notebook's last code cell prints."""
    cell = [c for c in nb.cells if c.cell_type == "code"][-1]
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    return dict(json.loads(text.strip().splitlines()[-1]))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path) -> None:  # type: ignore[no-untyped-def]
    nb = _execute(path)
    if path.name == "quickstart.ipynb":
        s = _last_json_line(nb)
        assert s["format"] == "csr"  # 10% density: below every path's measured CSR crossover
        assert s["loss_last"] < 0.1 * s["loss_first"]  # the adapter learns the low-rank update
        assert s["zeros_kept"] is True
        assert s["dora"] == "DoRALinear" and s["dora_same_output"] is True
        assert s["plan_status"] in ("optimal", "feasible")
        assert s["plan_peak"] <= 0.7 * s["no_remat_peak"] < s["no_remat_peak"]
