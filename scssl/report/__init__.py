"""Report layer: benchmark tables, figures and an HTML page from MLflow alone; embeddings as .h5ad.

Loaded on first use (MLflow, Ray, matplotlib).
"""

from scssl import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "build": ["build_report"],
    "embeddings": ["write_embeddings"],
    "runs": ["log_cell_metadata"],
    "tables": ["benchmark_tables", "collect", "summarize"],
})

__all__ = ["benchmark_tables", "build_report", "collect", "log_cell_metadata", "summarize", "write_embeddings"]
