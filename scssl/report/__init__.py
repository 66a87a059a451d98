"""Report layer: benchmark tables, figures and an HTML page from MLflow alone; embeddings as .h5ad."""

from scssl.report.build import build_report
from scssl.report.embeddings import write_embeddings
from scssl.report.runs import log_cell_metadata
from scssl.report.tables import benchmark_tables, collect, relative_to_cohort, summarize

__all__ = ["benchmark_tables", "build_report", "collect", "log_cell_metadata", "relative_to_cohort", "summarize",
           "write_embeddings"]
