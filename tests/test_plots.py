"""fnn's figures: shown exactly once in a fresh notebook kernel, and readable for a one-epoch run."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

import fnn
from fnn.io import plots

HISTORY = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.4], "test_loss": [1.1, 0.7, 0.6],
           "train_accuracy": [0.5, 0.8, 0.9], "test_accuracy": [0.4, 0.7, 0.8],
           "diag_grad_norm_l1": [1.0, 2.0, 3.0], "diag_snr_l1": [0.5, 0.4, 0.3],
           "diag_norm_spread_l1": [0.2, 0.3, 0.25], "diag_ggn_trace_l1": [9.0, 7.0, 6.0]}


def _sweep(epochs: int):
    """A stand-in for ``[(label, SweepResult)]`` of two grid points (lr) over three seeds."""
    rng = np.random.default_rng(0)
    history = {"test_loss": rng.uniform(0.2, 1.0, (6, epochs)), "test_accuracy": rng.uniform(0.3, 0.9, (6, epochs))}
    configs = [{"point": g, "seed": s} for g in (0, 1) for s in (0, 1, 2)]
    return [("relu", SimpleNamespace(history=history, configs=configs, summary=[{"lr": 0.5}, {"lr": 0.001}]))]


def _cells():
    """One figure per cell, each as the cell's last expression, in a kernel that never touched pyplot."""
    setup = (f"import fnn, numpy as np\nh = {HISTORY!r}\n"
             "from tests.test_plots import _sweep\n")
    return [setup, "fnn.plot_history(h)", "fnn.plots.plot_diagnostics(h)", "fig = fnn.plot_history(h)\nfig",
            "from IPython.display import display\ndisplay(fnn.plot_history(h))",
            "fnn.plots.plot_sweep(_sweep(3), {'lr': [0.5, 0.001]})",
            # notebooks/02's pattern, after pyplot drew a figure of its own: that one and ours, once each
            "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\nfig = fnn.plot_history(h)\n"
            "display(fig)\nplt.close(fig)",
            "%matplotlib inline\nfnn.plot_history(h)"]


def test_a_figure_is_shown_exactly_once_in_a_fresh_kernel():
    """In a fresh Jupyter kernel (inline backend, pyplot never used by the notebook), a figure
    returned as a cell's value, or passed to display(), is one image/png output, not zero (a bare
    Figure without the inline formatter) and not two (also flushed by pyplot at the cell's end)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in _cells()])
    root = str(Path(__file__).resolve().parents[1])  # so that the kernel imports tests.test_plots
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": root}}).execute()
    errors = [o for c in nb.cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    for cell in nb.cells[1:]:
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(images) == (2 if "plt.plot" in cell.source else 1), (cell.source, cell.outputs)


def _inside(fig, artist) -> bool:
    """Whether ``artist``'s drawn box lies within the figure (a label not cut at an edge)."""
    box, page = artist.get_window_extent(FigureCanvasAgg(fig).get_renderer()), fig.bbox
    return box.x0 >= page.x0 - 0.5 and box.x1 <= page.x1 + 0.5 and box.y0 >= page.y0 - 0.5 and box.y1 <= page.y1 + 0.5


def _y_tick_labels(ax):
    """The y tick labels drawn (major and minor, inside the axis range, not empty)."""
    lo, hi = sorted(ax.get_ylim())
    return [label for minor in (False, True)
            for t, label in zip(ax.get_yticks(minor=minor), ax.get_yticklabels(minor=minor))
            if lo <= t <= hi and label.get_text()]


@pytest.mark.parametrize("draw", ["history", "diagnostics", "sweep"])
def test_a_one_epoch_figure_shows_its_points_on_a_whole_epoch_tick(draw):
    one = {k: v[:1] for k, v in HISTORY.items()} | {"train_loss": [0.0123], "test_loss": [0.0127]}
    fig = {"history": lambda: fnn.plot_history(one, "a title"), "diagnostics": lambda: plots.plot_diagnostics(one),
           "sweep": lambda: plots.plot_sweep(_sweep(1), {"lr": [0.5, 0.001]})}[draw]()
    FigureCanvasAgg(fig).draw()  # the layout as saved (a released figure's own canvas draws nothing)
    assert plots.pyplot().get_fignums() == []  # not left open in pyplot
    for ax in fig.axes:
        lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 1]
        assert lines and all(line.get_marker() not in (None, "None", "", " ") for line in lines)  # visible
        lo, hi = ax.get_xlim()
        assert [t for t in ax.get_xticks() if lo <= t <= hi] == [1]  # one tick, at epoch 1
        labels = [a for a in (ax.yaxis.label, ax.xaxis.label, ax.title, *_y_tick_labels(ax)) if a.get_text()]
        assert len(labels) >= 4 and all(_inside(fig, a) for a in labels)


def test_a_many_epoch_figure_keeps_whole_epoch_ticks_and_lines():
    fig = fnn.plot_history(HISTORY, "a title")
    FigureCanvasAgg(fig).draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        assert [t for t in ax.get_xticks() if lo <= t <= hi] == [1, 2, 3]
        assert all(line.get_marker() in (None, "None", "") for line in ax.get_lines())
