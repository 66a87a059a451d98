"""scssl: benchmark and tune self-supervised learning for single-cell genomics.

Layers, each importing only those before it: data -> augment -> methods -> train -> evaluate
-> tune -> report. Only ``tune`` and ``report`` know Ray and MLflow.
"""

__version__ = "0.1.0"
