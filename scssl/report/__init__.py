"""Report layer: benchmark tables from MLflow, embeddings as .h5ad."""

from scssl.report.embeddings import write_embeddings
from scssl.report.tables import collect, summarize, write_tables

__all__ = ["collect", "summarize", "write_embeddings", "write_tables"]
