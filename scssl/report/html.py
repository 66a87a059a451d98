"""The report as one self-contained HTML page: every table, and every figure embedded as base64 PNG."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import jinja2

from scssl.report.formats import html
from scssl.report.tables import Table

_PAGE = jinja2.Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 0.5em; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.scroll { overflow-x: auto; } figure { margin: 1.5em 0; } img { max-width: 100%; }
p.note { color: #555; max-width: 70em; }
</style></head><body>
<h1>{{ title }}</h1>
{% if status %}<h2>Not shown: missing or out of date</h2>
<ul>{% for line in status %}<li>{{ line }}</li>{% endfor %}</ul>
{% endif %}{% if not tables %}<p>No finished retrain run of the study as it is now.</p>
{% else %}<h2>Tables</h2>{% endif %}
{% for table in tables %}<h3 id="{{ table.name }}">{{ table.title }}</h3>
<p class="note">{{ table.note }}</p>
<div class="scroll">{{ table.html | safe }}</div>
{% endfor %}
{% for section, figures in sections.items() %}<h2>{{ section }}</h2>
{% for figure in figures %}<figure><img alt="{{ figure.caption }}" src="data:image/png;base64,{{ figure.base64 }}">
<figcaption>{{ figure.caption }}</figcaption></figure>
{% endfor %}{% endfor %}</body></html>
""", autoescape=True)


@dataclass(frozen=True)
class ReportFigure:
    section: str  # heading the figure appears under
    caption: str
    path: Path

    @property
    def base64(self) -> str:
        return base64.b64encode(self.path.read_bytes()).decode("ascii")


def write_html(title: str, tables: list[Table], figures: list[ReportFigure], out: Path,
               status: list[str] = ()) -> Path:
    """``out``: what is missing or out of date (``status``), ``tables`` (summary first) and ``figures`` grouped by
    section, with no link to any other file."""
    ordered = sorted(tables, key=lambda t: t.name != "summary")
    shown = [{"name": t.name, "title": t.title, "note": t.note, "html": html(t.text())} for t in ordered]
    sections: dict[str, list[ReportFigure]] = {}
    for figure in figures:
        sections.setdefault(figure.section, []).append(figure)
    out.write_text(_PAGE.render(title=title, tables=shown, sections=sections, status=list(status)))
    return out
