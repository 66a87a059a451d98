"""The report's figures as PNG files: a task table drawn as scib-metrics draws its results table, and a UMAP per
method."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from plottable import ColumnDefinition, Table
from plottable.cmap import normed_cmap
from plottable.plots import bar

from scssl.evaluate import exact_neighbors
from scssl.report.tables import Table as ReportTable

MAX_UMAP_CELLS = 20_000  # beyond this a fixed random subset of cells is drawn


def results_table_figure(table: ReportTable, dataset: str, labels: list[str], headers: dict[str, str],
                         out: Path) -> Path:
    """One data set's rows of ``table`` (named by ``labels``) as scib-metrics draws its results table
    (``Benchmarker.plot_results_table``): the groups of columns of the table's figure, circles for metrics, bars for
    its ``bars``, the best row (by the table's rank) first.

    Drawn with plottable the way scib-metrics draws it, because a Benchmarker plots only results it computed
    itself; here the values are means over seeds of the stored scores.
    """
    numbers, spec = table.numbers.xs(dataset, level="dataset"), table.spec
    groups = {m: title for title, metrics in spec.figure.groups for m in metrics if f"{m}_mean" in numbers}
    metrics, bars = list(groups), spec.figure.bars
    frame = pd.DataFrame({headers[m]: numbers[f"{m}_mean"].to_numpy(float) for m in metrics}, index=labels)
    if spec.rank_by is not None:
        frame = frame.sort_values(headers[spec.rank_by], ascending=False, kind="stable")
    frame.insert(0, "Method", frame.index)
    columns = [ColumnDefinition("Method", width=1.5, textprops={"ha": "left", "weight": "bold"})]
    for m in metrics:
        header, group = headers[m], groups[m]
        if m in bars:
            columns.append(ColumnDefinition(
                header, width=1, title=header.replace(" ", "\n", 1), plot_fn=bar, group=group,
                plot_kw={"cmap": mpl.cm.YlGnBu, "plot_bg_bar": False, "annotate": True, "height": 0.9,
                         "formatter": "{:.2f}"},
                border="left" if m == bars[0] else None))
        else:
            columns.append(ColumnDefinition(
                header, width=1, title=header.replace(" ", "\n", 1), group=group, formatter="{:.2f}",
                textprops={"ha": "center", "bbox": {"boxstyle": "circle", "pad": 0.25}},
                cmap=normed_cmap(frame[header], cmap=mpl.cm.PRGn, num_stds=2.5)))
    figure = Figure(figsize=(len(frame.columns) * 1.25, 3 + 0.3 * len(frame)))
    Table(frame, ax=figure.subplots(), column_definitions=columns, index_col="Method",
          cell_kw={"linewidth": 0, "edgecolor": "k"}, row_dividers=True, footer_divider=True,
          textprops={"fontsize": 10, "ha": "center"}, row_divider_kw={"linewidth": 1, "linestyle": (0, (1, 5))},
          col_label_divider_kw={"linewidth": 1, "linestyle": "-"},
          column_border_kw={"linewidth": 1, "linestyle": "-"}).autoset_fontcolors(colnames=frame.columns)
    figure.savefig(out, dpi=120, facecolor="white")
    return out


def umap_figure(embedding: np.ndarray, cells: pd.DataFrame, title: str, out: Path) -> Path:
    """A UMAP (umap-learn, seed 0, on exact 15-nearest neighbours) of ``embedding``, cells coloured by batch and
    by cell type (``cells``' ``batch`` and ``label`` columns, same rows), drawn in a random order so that no
    group hides another."""
    import umap  # numba compiles on first use: only when a UMAP is drawn

    rng = np.random.default_rng(0)
    keep = np.arange(len(cells))
    if len(keep) > MAX_UMAP_CELLS:
        keep = np.sort(rng.choice(len(keep), MAX_UMAP_CELLS, replace=False))
    points = np.asarray(embedding, dtype=np.float32)[keep]
    knn = exact_neighbors(points, 15)  # also spares compiling umap's approximate search
    with warnings.catch_warnings():  # "n_jobs overridden to 1 by setting random_state": wanted here
        warnings.simplefilter("ignore", UserWarning)
        xy = umap.UMAP(random_state=0, precomputed_knn=(knn.indices, knn.distances, None)).fit_transform(points)
    order = rng.permutation(len(keep))
    figure = Figure(figsize=(13, 5.5), layout="constrained")
    for ax, column, name in zip(figure.subplots(1, 2), ("batch", "label"), ("batch", "cell type")):
        codes, categories = pd.factorize(cells[column].to_numpy()[keep], sort=True)
        colors = _palette(len(categories))
        ax.scatter(xy[order, 0], xy[order, 1], c=colors[codes[order]], s=min(20.0, 6000 / len(keep)), linewidths=0)
        handles = [Line2D([], [], marker="o", linestyle="", color=c, label=str(k)) for k, c in zip(categories, colors)]
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1, 0.5), fontsize=7, frameon=False,
                  ncols=1 + (len(categories) - 1) // 25)
        ax.set(title=f"{title}, by {name}", xticks=[], yticks=[], xlabel="UMAP 1", ylabel="UMAP 2")
    figure.savefig(out, dpi=100)
    return out


def _palette(n: int) -> np.ndarray:
    """tab10 / tab20 for few groups, evenly spaced turbo colours for many."""
    if n <= 20:
        return np.asarray(mpl.colormaps["tab10" if n <= 10 else "tab20"].colors)[:n]
    return mpl.colormaps["turbo"](np.linspace(0, 1, n))[:, :3]
