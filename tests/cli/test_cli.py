from scssl.cli import main
from scssl.methods import METHODS


def test_methods_lists_every_method_with_parameters_and_defaults(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    names = ("pca", "simclr", "moco", "simsiam", "nnclr", "byol", "barlow_twins", "vicreg", "mae", "scclip", "totalvi",
             "multivi", "scvi", "scanvi", "concerto", "clear", "claire", "scgpt", "scgpt_zero_shot", "geneformer", "scbert")
    for name in names:
        assert f"{name} (" in out
    assert len(METHODS) == len(names)
    assert "scclip (SSL method, multimodal data only)" in out
    assert "totalvi (generative model, trained by scvi-tools, RNA + protein data only)" in out
    assert "multivi (generative model, trained by scvi-tools, RNA + atac data only)" in out
    assert "scvi (generative model, trained by scvi-tools)" in out and "    query_epochs = 100" in out
    assert "scanvi (semi-supervised generative model (learns from labels), trained by scvi-tools)" in out
    assert "    memory_size = 2048" in out and "    lambda_offdiag = 0.005" in out
    assert "    momentum_start = 0.996" in out and "    temperature = 0.5" in out


def test_datasets_lists_the_builtin(capsys):
    assert main(["datasets"]) == 0
    assert "bmmc_cite_starter" in capsys.readouterr().out
