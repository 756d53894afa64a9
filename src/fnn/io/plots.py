"""Figures of a training history (matplotlib, imported only when a figure is drawn)."""

from __future__ import annotations

import io

import numpy as np

from fnn.analysis.stats import mean_ci


def pyplot():
    """``matplotlib.pyplot``, imported on first use (Agg outside notebooks); a clear error if missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("Plotting needs matplotlib: pip install matplotlib.") from None
    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def new_figure(**kwargs):
    """A matplotlib ``Figure`` made through pyplot (so that a notebook's inline backend is loaded
    and registers its PNG formatter), laid out by matplotlib's constrained layout (no label cut
    at an edge). A plotting function hands it to :func:`released` before returning it."""
    return pyplot().figure(layout="constrained", **kwargs)


def released(fig):
    """``fig``, taken out of pyplot's list of open figures: returned by a plotting function, it is
    shown once in a notebook (as the cell's value or by ``display``), not also by pyplot at the
    end of the cell, and it is freed with its last reference. Save it with ``fig.savefig``."""
    pyplot().close(fig)
    return fig


def epoch_ticks(ax, epochs) -> None:
    """Whole-number epoch ticks on ``ax``'s x axis; one epoch alone gets the axis 0.5 .. 1.5
    around it (a single tick, not the fractional ones of a zero-width range)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)


def _marker(epochs) -> str | None:
    """A dot per point when a curve has too few points to show a line (one epoch)."""
    return "o" if len(epochs) <= 1 else None


def plot_history(history: dict, title: str | None = None, split_names: tuple[str, str] = ("train", "test")):
    """Loss (log scale), accuracy or R², and the learning rate (when recorded) against the epoch.

    Args:
      history: per-epoch lists as :func:`fnn.fit` returns them (``epoch``,
        ``train_loss``, ``test_loss``, ``train_accuracy`` or ``train_r2``, ``batch_loss``,
        ``lr``, ...). Epoch ``k`` is drawn at ``x = k``.
      title: the figure's title.
      split_names: the labels for the ``train_*`` and ``test_*`` curves; ``val_*`` curves (a
        validation split) are labelled ``validation``.

    Returns:
      The matplotlib ``Figure``, not left open in pyplot (see :func:`released`): a notebook
      shows it once.
    """
    second = "accuracy" if "train_accuracy" in history else "r2"
    panels = 3 if "lr" in history else 2
    fig = new_figure(figsize=(5 * panels, 4))
    axes = fig.subplots(1, panels)
    epochs = history["epoch"]
    dot = _marker(epochs)
    if "batch_loss" in history:
        axes[0].plot(epochs, history["batch_loss"], ":", color="grey", marker=dot, label="minibatch mean (running)")
    for split, label in (("train", split_names[0]), ("val", "validation"), ("test", split_names[1])):
        if f"{split}_loss" in history:
            axes[0].plot(epochs, history[f"{split}_loss"], marker=dot, label=f"{label} (full set)")
        if f"{split}_{second}" in history:
            axes[1].plot(epochs, history[f"{split}_{second}"], marker=dot, label=label)
    axes[0].set(xlabel="epoch", ylabel="loss (risk R)", yscale="log", title="loss")
    axes[1].set(xlabel="epoch", ylabel=second, title=second)
    if panels == 3:
        axes[2].plot(epochs, history["lr"], color="black", marker=dot, label="lr at the epoch's last step")
        axes[2].set(xlabel="epoch", ylabel="learning rate", title="learning-rate schedule")
    return _finish(fig, axes, title, 8, epochs)


def _finish(fig, axes, title: str | None, legend_size: int, epochs):
    """Legend, grid and whole-epoch ticks on every panel, the title; ``fig`` :func:`released`."""
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:  # a panel with nothing labelled (e.g. no held-out set) has none
            ax.legend(fontsize=legend_size)
        ax.grid(alpha=0.3)
        epoch_ticks(ax, epochs)
    if title:
        fig.suptitle(title, fontsize=9)
    return released(fig)


def figure_png(fig) -> bytes:
    """The figure as PNG bytes (closed afterwards), for an atomic write."""
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def plot_diagnostics(history: dict, title: str | None = None):
    """The ``diag_*`` curves :func:`fnn.fit` records with ``diagnostics=True``: gradient norm,
    gradient signal-to-noise ratio, spread of per-example norms and GGN trace, one line per
    layer (numbered from 1), against the epoch. Returns the matplotlib ``Figure`` (not left open
    in pyplot: :func:`released`)."""
    panels = [("grad_norm", "‖∇R‖ per layer", "log"), ("snr", "gradient SNR (mean² / variance)", "log"),
              ("norm_spread", "per-example norm spread (std / mean)", "linear"),
              ("ggn_trace", "GGN trace (curvature)", "log")]
    fig = new_figure(figsize=(16, 3.6))
    axes = fig.subplots(1, 4)
    for ax, (key, label, scale) in zip(axes, panels):
        layers = sorted((k for k in history if k.startswith(f"diag_{key}_l")), key=lambda k: int(k.rsplit("l", 1)[1]))
        for k in layers:
            ax.plot(history["epoch"], history[k], marker=_marker(history["epoch"]), label=f"layer {k.rsplit('l', 1)[1]}")
        ax.set(xlabel="epoch", title=label, yscale=scale)
    return _finish(fig, axes, title, 7, history["epoch"])


def plot_sweep(results, grid: dict, split: str = "test"):
    """The mean curve of every grid point of a sweep, with its 95% band over seeds: loss and
    accuracy (or R²) on the validation split (``val_*``, when the sweep has one) or else the
    test split, against the epoch. ``results``: ``[(label, SweepResult), ...]`` (one per program
    group, e.g. per activation); the legend names the swept settings. ``split``: the name shown
    for ``test_*`` curves. Bands are clipped to the metric's range (:func:`band`); a one-epoch sweep gets
    dots with error bars. Returns the
    matplotlib ``Figure`` (not left open in pyplot: :func:`released`)."""
    plt = pyplot()
    first = results[0][1].history
    held = "val" if "val_loss" in first else "test"
    second = f"{held}_accuracy" if f"{held}_accuracy" in first else f"{held}_r2"
    panels = [k for k in (f"{held}_loss", second) if k in first] or ["train_loss"]
    fig = new_figure(figsize=(6 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    colours = plt.get_cmap("tab10" if sum(len(r.summary) for _, r in results) <= 10 else "viridis")
    n_points, i = sum(len(r.summary) for _, r in results), 0
    for label, result in results:
        point_of = np.array([c["point"] for c in result.configs])
        for g, row in enumerate(result.summary):
            name = ", ".join([label] * (len(results) > 1) + [f"{k}={row[k]}" for k in grid if k in row]) or "runs"
            colour = colours(i % 10 if n_points <= 10 else i / max(n_points - 1, 1))
            i += 1
            for ax, key in zip(axes[0], panels):
                curves = result.history[key][point_of == g]
                stats = np.array([mean_ci(curves[:, e])[:3] for e in range(curves.shape[1])])
                epochs = np.arange(1, curves.shape[1] + 1)
                ax.plot(epochs, stats[:, 0], color=colour, marker=_marker(epochs), label=name)
                low, high = band(key, curves, stats[:, 0], stats[:, 2])
                if len(epochs) == 1:  # a band of zero width: the interval as an error bar
                    ax.errorbar(epochs, stats[:, 0], fmt="none", capsize=4, color=colour,
                                yerr=np.clip([stats[:, 0] - low, high - stats[:, 0]], 0, None))
                ax.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
    for ax, key in zip(axes[0], panels):
        name = key.replace("val_", "validation ").replace("test_", f"{split} ")
        ax.set(xlabel="epoch", ylabel=name, title=name)
        if key.endswith("loss"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        epoch_ticks(ax, np.arange(1, first[panels[0]].shape[1] + 1))
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"mean over seeds with 95% bands (n = {len(set(c['seed'] for c in results[0][1].configs))})",
                 fontsize=9)
    return released(fig)


def band(key: str, curves, mean, half):
    """``(low, high)``: the band ``mean ± half`` of metric ``key`` clipped to what the metric can
    be: accuracy in [0, 1], R² at most 1, a loss (drawn on a log axis) at least the lowest run's
    value at that epoch (positive). ``curves``: ``(runs, epochs)``, NaN for diverged runs."""
    low, high = mean - half, mean + half
    if key.endswith("accuracy"):
        return np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
    if key.endswith("r2"):
        return np.minimum(low, 1.0), np.minimum(high, 1.0)
    if key.endswith("loss"):
        positive = np.where(np.asarray(curves) > 0, curves, np.inf)  # NaN compares False: left out
        floor = positive.min(axis=0) if len(positive) else np.full_like(low, np.inf)
        return np.where(np.isfinite(floor), np.maximum(low, floor), low), high
    return low, high
