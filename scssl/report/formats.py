"""A table of strings as Markdown, LaTeX or an HTML fragment: the text forms of every report table."""

from __future__ import annotations

import pandas as pd


def cell(value, fmt: str, std=float("nan")) -> str:
    """``value ± std`` in ``fmt``; ``value`` alone without a std (one seed); "–" when there is no value."""
    if pd.isna(value):
        return "–"
    return fmt.format(value) if pd.isna(std) else f"{fmt.format(value)} ± {fmt.format(std)}"


def markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def latex(frame: pd.DataFrame, caption: str, label: str, labels: int) -> str:
    """A booktabs ``table`` environment, the first ``labels`` columns (row labels) left-aligned, the others
    right-aligned; ± and – as LaTeX commands so that any engine reads them."""
    text = frame.to_latex(index=False, escape=True, caption=caption, label=label,
                          column_format="l" * labels + "r" * (len(frame.columns) - labels))
    return text.replace("±", r"$\pm$").replace("–", "--")


def html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, border=0)
