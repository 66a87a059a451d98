"""scBERT (Yang et al. 2022), one of scSSL-Bench's foundation-model rows: registered so that an experiment can name
it, but it cannot run here, and it says why rather than give a stand-in embedding.

Its code is the scripts of github.com/TencentAILabHealthcare/scBERT (with its own modified copy of
``performer_pytorch``), not a package: the PyPI package named ``scbert`` is an unrelated sentence-clustering tool,
and PyPI's ``performer-pytorch`` is only the library scBERT modified. It also needs scBERT's pretrained checkpoint
(``panglao_pretrain.pth``) and gene2vec embeddings, with the data cut to its 16,906 PanglaoDB genes.
"""

from __future__ import annotations

from typing import ClassVar

from scssl.methods.base import UnavailableMethod


class ScBERT(UnavailableMethod):
    """Not runnable here: building it, or naming it in an experiment, is an error that says what it needs."""

    name: ClassVar[str] = "scbert"
    kind: ClassVar[str] = "foundation model, not installable here"
    needs: ClassVar[str] = (
        "scbert needs scBERT's code (the scripts of github.com/TencentAILabHealthcare/scBERT with their modified "
        "performer_pytorch; not on PyPI, where `scbert` is an unrelated package), its pretrained checkpoint "
        "(panglao_pretrain.pth) and gene2vec embeddings, and the data cut to its 16,906 PanglaoDB genes; scssl does "
        "not run it")
