import math
from pathlib import Path

import pytest
import torch
import yaml

from scssl.methods.base import Batch
from scssl.methods.concerto import Concerto, ConcertoParams
from scssl.search_space import load_search_space
from scssl.settings import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _dense_teacher(teacher, x):
    """The teacher as the authors write it: every gene's token vector h materialised, then attention pooling."""
    ids, scale = teacher.tokenise(x)
    h = teacher.token_embedding.weight[ids] * scale.unsqueeze(-1)
    attention = torch.softmax(torch.tanh(teacher.attention(h)) @ teacher.context, dim=1)
    return teacher.head((attention.unsqueeze(-1) * h).sum(dim=1))


def _cells(n_cells, n_genes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(n_cells, n_genes, generator=generator) * 4
    return values * (torch.rand(n_cells, n_genes, generator=generator) < 0.4)  # sparse, as expression


def test_defaults_and_unknown_keys():
    p = ConcertoParams()
    assert (p.embedding_dim, p.temperature, p.dropout, p.value_bins) == (128, 0.2, 0.2, None)
    with pytest.raises(ValueError):
        ConcertoParams(hidden_dims=[64])  # the MLP encoder's keys are not Concerto's
    with pytest.raises(ValueError):
        ConcertoParams(value_bins=1)


def test_gene_tokens_are_the_genes_scaled_by_one_batchnorm_over_all_values():
    teacher = Concerto(3, ConcertoParams(embedding_dim=4)).encoder
    x = torch.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]])
    ids, scale = teacher.tokenise(x)
    assert ids.tolist() == [[0, 1, 2], [0, 1, 2]]
    mean, variance = 1.0, 8 / 6  # of the six values 0, 1, 3, 2, 0, 0 (biased, as BatchNorm in training)
    expected = (x - mean) / math.sqrt(variance + 1e-5)
    torch.testing.assert_close(scale, expected)


def test_value_bin_tokens_by_hand():
    teacher = Concerto(6, ConcertoParams(embedding_dim=4, value_bins=10)).encoder.eval()
    # eval: each gene's BatchNorm at its initial statistics (mean 0, variance 1) leaves the values as they are
    x = torch.tensor([[-0.5, 0.3, 1.7, 2.5, 9.2, 25.0]])
    ids, scale = teacher.tokenise(x)
    assert ids.tolist() == [[0, 0, 1, 2, 9, 9]]  # ReLU, rounded down, past the last bin: the last bin
    assert scale.tolist() == [[1.0] * 6]


def test_value_bin_tokens_cannot_tell_genes_apart():
    """scSSL-Bench's tokens lose which gene a value belongs to: swapping genes leaves its teacher unchanged."""
    x = _cells(8, 20)
    swapped = x[:, torch.randperm(20, generator=torch.Generator().manual_seed(1))]
    for value_bins, blind in ((10, True), (None, False)):
        torch.manual_seed(0)
        teacher = Concerto(20, ConcertoParams(embedding_dim=8, value_bins=value_bins)).encoder.eval()
        with torch.no_grad():
            same = torch.allclose(teacher(x), teacher(swapped), atol=1e-6)
        assert same == blind, f"value_bins={value_bins}"


@pytest.mark.parametrize("value_bins", [None, 10])
def test_chunked_teacher_is_the_dense_attention_pooling(value_bins, monkeypatch):
    import scssl.methods.concerto as concerto

    monkeypatch.setattr(concerto, "CHUNK_ELEMENTS", 12 * 8 * 7)  # chunks of 7 genes: 3 of them, the last short
    torch.manual_seed(0)
    teacher = Concerto(17, ConcertoParams(embedding_dim=8, dropout=0.0, value_bins=value_bins)).encoder.double()
    x = _cells(12, 17).double()  # double: the two orders of summation agree to round-off
    chunked = teacher(x)
    chunked.pow(2).sum().backward()
    chunked_grads = [p.grad.clone() for p in teacher.parameters() if p.grad is not None]
    teacher.zero_grad()
    dense = _dense_teacher(teacher, x)
    dense.pow(2).sum().backward()
    torch.testing.assert_close(chunked, dense)
    dense_grads = [p.grad for p in teacher.parameters() if p.grad is not None]
    assert len(chunked_grads) == len(dense_grads) >= 6
    for a, b in zip(chunked_grads, dense_grads):
        torch.testing.assert_close(a, b)


def test_no_cells_by_genes_by_width_tensor_is_kept_for_backward(monkeypatch):
    import scssl.methods.concerto as concerto

    n_cells, n_genes, width = 32, 500, 64
    monkeypatch.setattr(concerto, "CHUNK_ELEMENTS", n_cells * width * 100)  # 100 genes a chunk
    model = Concerto(n_genes, ConcertoParams(embedding_dim=width))
    largest = []

    def pack(tensor):
        largest.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model.training_loss(Batch(_cells(n_cells, n_genes), torch.arange(n_cells)))
    loss.backward()
    full = n_cells * n_genes * width
    kept = max(n_cells * n_genes, n_genes * width)  # a chunk's cells x genes x width tensors are 204,800
    assert max(largest) <= kept, f"a tensor of {max(largest)} elements saved (all genes: {full})"
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _dense_teacher(model.encoder, _cells(n_cells, n_genes)).sum()
    assert max(largest) >= full  # the check would see the dense formulation's


def test_loss_is_nt_xent_between_teacher_and_student_by_hand():
    torch.manual_seed(0)
    model = Concerto(6, ConcertoParams(embedding_dim=4, dropout=0.0, temperature=0.3))
    x = _cells(3, 6)
    loss = model.training_loss(Batch(x, torch.arange(3)))
    with torch.no_grad():
        teacher, student = model.encoder(x), model.student(x)
    zs = [v / v.norm() for v in torch.cat([teacher, student])]
    n, total = 3, 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)  # a cell's teacher output and its student output are the positive pair
        num = math.exp(float(zs[i] @ zs[j]) / 0.3)
        den = sum(math.exp(float(zs[i] @ zs[k]) / 0.3) for k in range(2 * n) if k != i)
        total += -math.log(num / den)
    assert loss.item() == pytest.approx(total / (2 * n), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.student.parameters())
    assert model.encoder.context.grad is not None and model.encoder.token_embedding.weight.grad is not None


def test_embedding_is_the_teachers_output_normalised():
    torch.manual_seed(0)
    model = Concerto(30, ConcertoParams(embedding_dim=8)).eval()
    x = _cells(10, 30)
    with torch.no_grad():
        before = model.embed(x)
        torch.testing.assert_close(before, torch.nn.functional.normalize(model.encoder(x), dim=1))
        torch.testing.assert_close(before.norm(dim=1), torch.ones(10))
        assert model.rna_encoder(x).shape == (10, 8)  # what fine-tuning heads on: embedding_dim wide
        for p in model.student.parameters():
            p.add_(1.0)
        torch.testing.assert_close(model.embed(x), before)  # the student is not used
        model.encoder.token_embedding.weight.mul_(2.0)
        assert not torch.allclose(model.embed(x), before)  # the teacher is


def test_dropout_is_the_noise_in_training_and_off_when_embedding():
    torch.manual_seed(0)
    model = Concerto(30, ConcertoParams(embedding_dim=16, dropout=0.5))
    x = _cells(10, 30)
    with torch.no_grad():
        assert not torch.allclose(model.encoder(x), model.encoder(x))
        assert not torch.allclose(model.student(x), model.student(x))
        model.eval()
        first = model.embed(x)
        torch.testing.assert_close(model.embed(x), first)
        torch.testing.assert_close(model.embed(x[:3]), first[:3])  # independent of the rest of the batch
    torch.manual_seed(0)
    still = Concerto(30, ConcertoParams(embedding_dim=16, dropout=0.0))
    with torch.no_grad():  # without dropout, training-mode passes agree: dropout is all the noise there is
        torch.testing.assert_close(still.encoder(x), still.encoder(x))


def test_search_space_is_valid_and_has_no_augment_section(tmp_path):
    space = load_search_space(ROOT / "search_spaces" / "concerto.yaml", Concerto)
    assert any(path[0] == "method" for path in space.entries)
    body = yaml.safe_load((ROOT / "search_spaces" / "concerto.yaml").read_text())
    body["augment"] = {"masking": {"rate": 0.5}}
    bad = tmp_path / "concerto.yaml"
    bad.write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError, match="augment"):
        load_search_space(bad, Concerto)
