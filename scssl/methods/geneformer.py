"""Geneformer (Theodoris et al. 2023), one of scSSL-Bench's foundation-model rows: registered so that an experiment
can name it, but it cannot run here, and it says why rather than give a stand-in embedding.

Its code is the ``geneformer`` package of huggingface.co/ctheodoris/Geneformer, which is not on PyPI (scssl installs
only from PyPI), and it needs that repository's pretrained weights with its token dictionary and gene median files
(genes as Ensembl IDs, each cell a rank-value encoding against those medians).
"""

from __future__ import annotations

from typing import ClassVar

from scssl.methods.base import UnavailableMethod


class Geneformer(UnavailableMethod):
    """Not runnable here: building it, or naming it in an experiment, is an error that says what it needs."""

    name: ClassVar[str] = "geneformer"
    kind: ClassVar[str] = "foundation model, not installable here"
    needs: ClassVar[str] = (
        "geneformer needs the `geneformer` package (from huggingface.co/ctheodoris/Geneformer; it is not on PyPI, "
        "so scssl cannot install it) and a checkpoint folder of its pretrained weights with its token dictionary "
        "and gene median files (genes named by Ensembl ID); scssl does not run it")
