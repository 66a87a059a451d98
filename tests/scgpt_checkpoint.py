"""A tiny scGPT checkpoint for tests: scGPT's own TransformerModel saved in the layout of its released checkpoints."""

import json

import torch

from scssl.methods.scgpt import scgpt_model_code

ARGS = {"embsize": 16, "nheads": 2, "d_hid": 32, "nlayers": 2, "n_layers_cls": 3, "dropout": 0.2,
        "pad_token": "<pad>", "pad_value": -2}
LEFT_OUT = 20  # the data's first genes, absent from the vocabulary


def write_checkpoint(folder, genes, left_out=LEFT_OUT):
    """A checkpoint folder of scGPT's layout for ``genes`` (but the first ``left_out``, plus two the data lacks), its
    tensors named as flash-attention names them in scGPT's released checkpoints; returns the model it saved."""
    vocab = {token: i for i, token in enumerate(["<pad>", "<cls>", "<eoc>", *genes[left_out:], "NOT1", "NOT2"])}
    torch.manual_seed(0)
    model = scgpt_model_code().TransformerModel(
        ntoken=len(vocab), d_model=ARGS["embsize"], nhead=ARGS["nheads"], d_hid=ARGS["d_hid"], nlayers=ARGS["nlayers"],
        nlayers_cls=ARGS["n_layers_cls"], n_cls=1, vocab=vocab, dropout=ARGS["dropout"], pad_token="<pad>",
        pad_value=ARGS["pad_value"], do_mvc=True, use_fast_transformer=False)
    folder.mkdir()
    torch.save({name.replace("in_proj_", "Wqkv."): t for name, t in model.state_dict().items()},
               folder / "best_model.pt")
    (folder / "args.json").write_text(json.dumps(ARGS))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return model.eval()
