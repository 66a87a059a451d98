"""Domain-specific BatchNorm (scSSL-Bench's RQ3): one BatchNorm per training batch in the first encoder layer,
unseen batches normalised by their own statistics over all their cells."""

import numpy as np
import pytest
import torch

from scssl.augment import AugmentationConfig
from scssl.data import Cells
from scssl.methods import MoCo, SimCLR
from scssl.methods.domain_norm import DomainBatchNorm, adapting, configure_domains
from scssl.train import TrainSettings, embed, train


def _two_batches(n=64, genes=20, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2 * n, genes)).astype(np.float32)
    X[n:] = X[n:] * 3 + 5  # the second batch shifted and scaled
    return X, np.repeat([0, 2], n)  # codes need not be contiguous


def test_each_batch_is_normalised_by_its_own_statistics_in_training():
    X, codes = _two_batches()
    norm = DomainBatchNorm(X.shape[1])
    configure_domains(norm, codes, torch.device("cpu"))
    assert sorted(norm.norms) == ["0", "2"]
    h = torch.from_numpy(X)
    out = norm(h, torch.from_numpy(codes))
    for code in (0, 2):
        rows = out[torch.from_numpy(codes == code)]
        torch.testing.assert_close(rows.mean(0), torch.zeros(X.shape[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(rows.var(0, unbiased=False), torch.ones(X.shape[1]), atol=1e-3, rtol=0)
        expected = 0.1 * h[torch.from_numpy(codes == code)].mean(0)  # momentum 0.1 from a zero running mean
        torch.testing.assert_close(norm.norms[str(code)].running_mean, expected, atol=1e-5, rtol=0)


def test_a_training_step_equals_a_batchnorm1d_per_batch_a_lone_row_by_the_running_statistics():
    """The step computes every batch's statistics at once (no wait for the device); it must equal BatchNorm1d
    run on each batch's rows alone: outputs, gradients, running statistics."""
    rng = np.random.default_rng(1)
    h = torch.tensor(rng.normal(size=(41, 6)) * rng.uniform(0.5, 3, 6) + rng.normal(size=6), dtype=torch.float32)
    codes = torch.tensor([0] * 20 + [3] * 20 + [5])  # batch 5: one row in this mini-batch; batch 7: none
    norm = DomainBatchNorm(6)
    norm.configure(np.array([0, 3, 5, 7]), torch.device("cpu"))
    for i, bn in enumerate(norm.norms.values()):  # distinct affine parameters and running statistics
        bn.weight.data.uniform_(0.5, 2.0)
        bn.bias.data.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    twins = {code: torch.nn.BatchNorm1d(6) for code in norm.norms}
    for code, twin in twins.items():
        twin.load_state_dict(norm.norms[code].state_dict())
    x = h.clone().requires_grad_()
    out = norm.train()(x, codes)
    x_twin = h.clone().requires_grad_()
    expected = torch.empty_like(h)
    for code in (0, 3):
        rows = codes == code
        expected[rows] = twins[str(code)].train()(x_twin[rows])
    expected[40:] = twins["5"].eval()(x_twin[40:])
    torch.testing.assert_close(out, expected)
    weights = torch.randn_like(h)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_twin.grad)
    for code in norm.norms:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(norm.norms[code], name), getattr(twins[code], name))
        twin_grad = twins[code].weight.grad  # None for batch 7: no row of it in the mini-batch
        torch.testing.assert_close(norm.norms[code].weight.grad, torch.zeros(6) if twin_grad is None else twin_grad)


def test_an_unseen_batch_is_normalised_by_the_statistics_of_all_its_cells_whatever_the_chunks():
    X, codes = _two_batches()
    params = SimCLR.Params(embedding_dim=8, domain_batchnorm=True)
    model = train(SimCLR, params, Cells(X[:64], batch_codes=codes[:64]), TrainSettings(epochs=2, batch_size=32), AugmentationConfig())
    query = Cells(X[64:], batch_codes=codes[64:])  # batch 2 never seen
    whole, chunked = embed(model, query, batch_size=1024), embed(model, query, batch_size=10)
    np.testing.assert_allclose(whole, chunked, rtol=1e-4, atol=1e-5)
    first = model.encoder[0](torch.from_numpy(X[64:]))  # the first layer's pre-norm activations
    with torch.no_grad(), adapting(model):
        model.encoder(torch.from_numpy(X[64:]), torch.from_numpy(codes[64:]))
    mean, var = model.encoder[1].adapted[2]
    torch.testing.assert_close(mean, first.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(var, first.var(0, unbiased=False), atol=1e-3, rtol=1e-3)
    # the same cells as of the seen batch 0: the running statistics of batch 0 instead
    as_seen = embed(model, Cells(X[64:], batch_codes=np.zeros(64, dtype=np.int64)))
    assert not np.allclose(as_seen, whole, atol=1e-3)


def test_momentum_targets_get_their_own_domain_norms_and_follow_the_online_ones():
    X, codes = _two_batches()
    params = MoCo.Params(embedding_dim=8, domain_batchnorm=True, memory_size=64, momentum_start=0.5)
    model = train(MoCo, params, Cells(X, batch_codes=codes), TrainSettings(epochs=2, batch_size=32, lr=1e-2), AugmentationConfig())
    online, target = model.encoder[1].norms["2"], model.key_encoder[1].norms["2"]
    assert online is not target
    assert not torch.equal(target.weight, torch.ones_like(target.weight))  # moved by EMA from its initial value


def test_training_cells_without_batches_are_an_error():
    X, _ = _two_batches()
    with pytest.raises(ValueError, match="batches"):
        train(SimCLR, SimCLR.Params(domain_batchnorm=True), X, TrainSettings(epochs=1, batch_size=32), AugmentationConfig())


def test_a_few_epochs_with_domain_norms_on_real_data_type_an_unseen_donor_better_than_untrained(tmp_path):
    from scssl.data import DatasetSpec, prepare, resolve
    from scssl.evaluate.cell_typing import knn_cell_typing

    ds = prepare(resolve(DatasetSpec(name="pbmc_hao2021"), tmp_path))
    ref, query, labels = ds.reference_index, ds.query_index, ds.labels
    params = SimCLR.Params(domain_batchnorm=True)

    def macro_f1(epochs, lr):
        torch.manual_seed(0)
        model = train(SimCLR, params, ds.cells(ref), TrainSettings(epochs=epochs, batch_size=128, lr=lr),
                      AugmentationConfig())
        embedding = embed(model, ds.cells())  # the query donor is a batch the model never saw
        return knn_cell_typing(embedding[ref], labels[ref], embedding[query], labels[query])["macro_f1"]

    untrained, trained = macro_f1(1, 1e-12), macro_f1(20, 1e-3)
    assert trained > untrained + 0.02, f"query macro F1 {untrained:.3f} -> {trained:.3f}"


def test_a_head_on_a_domain_norm_encoder_predicts_a_query_cell_whatever_the_chunks():
    """The query's batches are unseen: normalised by their statistics over all query cells, not per chunk."""
    from scssl.evaluate import FineTuneSettings
    from scssl.evaluate.fine_tuning import regress

    X, codes = _two_batches()
    query, query_codes = _two_batches(seed=1)
    query_codes = query_codes + 5  # batches the encoder was not trained on
    model = train(SimCLR, SimCLR.Params(embedding_dim=8, domain_batchnorm=True), Cells(X, batch_codes=codes),
                  TrainSettings(epochs=1, batch_size=32), AugmentationConfig())
    targets = X[:, :3] * 2
    settings = FineTuneSettings(epochs=2, batch_size=16)
    order = np.random.default_rng(0).permutation(len(query))
    for freeze in (True, False):
        predicted = regress(model.rna_encoder, 8, X, targets, query, settings, 0, freeze=freeze,
                            ref_codes=codes, query_codes=query_codes)
        shuffled = regress(model.rna_encoder, 8, X, targets, query[order], settings, 0, freeze=freeze,
                           ref_codes=codes, query_codes=query_codes[order])
        np.testing.assert_allclose(shuffled, predicted[order], rtol=1e-4, atol=1e-5)


def test_fine_tuned_cell_typing_runs_with_domain_norms_its_twin_from_scratch_included(prepared):
    from scssl.evaluate import FineTuneSettings, SharedData, TASKS, TaskInputs
    from scssl.methods import METHODS
    from scssl.search_space import trial_settings
    from scssl.stages import TuneSettings

    shared = SharedData.build(prepared, TuneSettings(), with_graphs=False)
    trial = trial_settings(METHODS["simclr"], TrainSettings(epochs=1, batch_size=64), AugmentationConfig(),
                           {"method": {"embedding_dim": 8, "domain_batchnorm": True}})
    metrics, _ = TASKS["fine_tuned_cell_typing"].run(shared, TaskInputs("simclr", trial, 0, 1,
                                                                        FineTuneSettings(epochs=2)))
    assert 0 <= metrics["macro_f1"] <= 1 and 0 <= metrics["scratch_macro_f1"] <= 1


def test_a_masked_autoencoder_reconstructs_an_unseen_batch_by_its_own_statistics_whatever_the_chunks():
    """The reconstruction task's cells reach the encoder with their batches: before, every row was normalised as
    of one unseen batch by its chunk's statistics."""
    from scssl.methods import MAE
    from scssl.train.loop import TrainedNetwork

    X, codes = _two_batches()
    model = TrainedNetwork(train(MAE, MAE.Params(embedding_dim=8, domain_batchnorm=True),
                                 Cells(X[:64], batch_codes=codes[:64]), TrainSettings(epochs=2, batch_size=32)))
    query = Cells(X[64:], batch_codes=codes[64:])  # batch 2 never seen
    whole, chunked = model.reconstruct(query, seed=0, batch_size=1024), model.reconstruct(query, seed=0, batch_size=10)
    np.testing.assert_array_equal(whole.scored, chunked.scored)  # the same masks
    np.testing.assert_allclose(whole.x_hat, chunked.x_hat, rtol=1e-4, atol=1e-5)
    # the same cells as of the seen batch 0: its running statistics instead
    as_seen = model.reconstruct(Cells(X[64:], batch_codes=np.zeros(64, dtype=np.int64)), seed=0)
    assert not np.allclose(as_seen.x_hat, whole.x_hat, atol=1e-3)
