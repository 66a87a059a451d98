import numpy as np
import pytest
import torch

from scssl.augment import AugmentationConfig
from scssl.data import Cells
from scssl.methods import PCABaseline, SimCLR
from scssl.train import NonFiniteLossError, TrainSettings, embed, fit, train


def test_training_reports_every_epoch_and_is_reproducible(prepared):
    X = prepared.X[prepared.reference_index]
    reports = []
    settings = TrainSettings(epochs=3, batch_size=64)
    model = train(SimCLR, SimCLR.Params(embedding_dim=8), X, settings, AugmentationConfig(), seed=3,
                  on_epoch=lambda m, r: reports.append(r))
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert all(np.isfinite(r.loss) for r in reports)
    again = train(SimCLR, SimCLR.Params(embedding_dim=8), X, settings, AugmentationConfig(), seed=3)
    np.testing.assert_allclose(embed(model, X), embed(again, X), rtol=1e-5, atol=1e-6)


def test_embedding_does_not_depend_on_batch_composition(prepared):
    X = prepared.X
    model = train(SimCLR, SimCLR.Params(embedding_dim=8), X, TrainSettings(epochs=1), AugmentationConfig())
    full = embed(model, X, batch_size=1024)
    np.testing.assert_allclose(embed(model, X[:10], batch_size=3), full[:10], rtol=1e-5, atol=1e-6)


def test_step_schedule_divides_lr_every_ten_epochs(prepared, monkeypatch):
    seen = []
    original = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    X = prepared.X[:64]
    train(SimCLR, SimCLR.Params(embedding_dim=4), X, TrainSettings(epochs=21, batch_size=64, schedule="step"),
          AugmentationConfig())
    assert seen[0] == pytest.approx(1e-4) and seen[10] == pytest.approx(1e-5) and seen[20] == pytest.approx(1e-6)


def test_non_finite_loss_stops_training():
    X = np.ones((64, 10), dtype=np.float32)
    X[0, 0] = np.nan
    with pytest.raises(NonFiniteLossError, match="simclr: loss is nan in epoch 1"):
        train(SimCLR, SimCLR.Params(embedding_dim=4), X, TrainSettings(epochs=2), AugmentationConfig())


def test_fit_pca_baseline_and_ssl(prepared):
    ref, query = prepared.reference_index, prepared.query_index
    model = fit("pca", PCABaseline.Params(n_components=5), prepared.cells(ref), TrainSettings(), AugmentationConfig(),
                seed=0)
    assert model.embed(prepared.cells(ref)).shape == (len(ref), 5)
    assert model.embed(prepared.cells(query)).shape == (len(query), 5)
    model = fit("simclr", SimCLR.Params(embedding_dim=6), prepared.cells(ref), TrainSettings(epochs=1),
                AugmentationConfig(), seed=0)
    assert model.embed(prepared.cells(query)).shape == (len(query), 6)


def test_training_with_neighbour_augmentations(prepared):
    from scssl.augment import build_neighbour_graph
    from scssl.settings import parse

    X = prepared.X[prepared.reference_index]
    graph = build_neighbour_graph(X, prepared.obs["batch"].to_numpy()[prepared.reference_index])
    augment = parse(AugmentationConfig, {"preset": "our_pipeline", "bbknn": {"prob": 0.5}}, "test")
    reports = []
    train(SimCLR, SimCLR.Params(embedding_dim=8), Cells(X, graph=graph), TrainSettings(epochs=2, batch_size=64),
          augment, on_epoch=lambda m, r: reports.append(r.loss))
    assert len(reports) == 2 and all(np.isfinite(reports))
    with pytest.raises(ValueError, match="NeighbourGraph"):
        train(SimCLR, SimCLR.Params(embedding_dim=8), X, TrainSettings(epochs=1), augment)


def test_raw_counts_are_cut_only_for_a_method_that_reads_them(prepared):
    """A trial or job of a network method never copies the raw counts (scVI's likelihood reads them)."""
    from scssl.evaluate import SharedData
    from scssl.methods import get_method
    from scssl.stages import TuneSettings

    shared = SharedData.build(prepared, TuneSettings(), with_graphs=False)
    simclr = shared.training_data("reference", inputs=get_method("simclr").inputs)
    scvi = shared.training_data("reference", inputs=get_method("scvi").inputs)
    assert simclr.counts is None and shared.cells(prepared.reference_index, get_method("simclr").inputs).counts is None
    assert scvi.counts.shape == simclr.X.shape == (len(prepared.reference_index), prepared.X.shape[1])


def test_the_epoch_loop_reports_each_epochs_mean_loss_counts_steps_and_stops_on_nan():
    from scssl.train import Optimisation, run_epochs

    weight = torch.nn.Parameter(torch.tensor(0.0))
    seen, steps, reports = [], [], []

    def loss(target):
        value = (weight - target) ** 2
        seen.append(float(value.detach()))
        return value

    run_epochs("toy", [weight], 3, lambda epoch: [1.0, 2.0], loss, Optimisation(lr=0.1, weight_decay=0.0),
               after_step=steps.append, on_epoch=reports.append)
    assert steps == [1, 2, 3, 4, 5, 6] and [r.epoch for r in reports] == [1, 2, 3]
    assert [r.loss for r in reports] == pytest.approx([np.mean(seen[i:i + 2]) for i in (0, 2, 4)])
    assert float(weight.detach()) > 0  # Adam moved it towards the targets
    with pytest.raises(NonFiniteLossError, match="toy: loss is nan in epoch 1"):
        run_epochs("toy", [weight], 2, lambda epoch: [float("nan")], loss, Optimisation(lr=0.1, weight_decay=0.0))


def test_a_trial_of_a_network_gathers_rows_of_the_shared_data_and_every_cell_once_per_epoch(prepared):
    """The trial's cells are rows of the data set's matrix, not a copy; an epoch visits each cell once (the last
    incomplete mini-batch dropped, as the study)."""
    from scssl.data.cells import RowsOf
    from scssl.evaluate import SharedData
    from scssl.stages import TuneSettings
    from scssl.train import start_training

    shared = SharedData.build(prepared, TuneSettings(), with_graphs=False)
    data, cells = shared.trial_data(SimCLR)
    assert isinstance(data.X, RowsOf) and data.X.matrix is prepared.X and cells.X is data.X
    assert not isinstance(shared.trial_data(PCABaseline)[0].X, RowsOf)  # reads whole matrices: its own copy
    training = start_training(SimCLR, SimCLR.Params(), data, TrainSettings(batch_size=64, device="cpu"),
                              AugmentationConfig(), seed=0)
    seen = torch.cat([batch.index for batch in training.batches(1)]).numpy()
    assert len(seen) == len(set(seen)) == data.n_cells // 64 * 64
    batch = next(training.batches(2))
    np.testing.assert_array_equal(batch.x.numpy(), prepared.X[prepared.reference_index[batch.index.numpy()]].toarray())


def test_the_per_epoch_embedding_of_the_training_cells_reuses_their_upload(prepared, monkeypatch):
    from scssl.train import loop

    uploads = []

    class Counted(loop.CellMatrix):
        def __init__(self, X, device="cpu"):
            uploads.append(X)
            super().__init__(X, device)

    monkeypatch.setattr(loop, "CellMatrix", Counted)
    cells = Cells(prepared.X[:256])
    fit("simclr", SimCLR.Params(), cells, TrainSettings(epochs=2, batch_size=64), AugmentationConfig(), 0,
        on_epoch=lambda model, report: model.embed(cells))
    assert uploads == [cells.X]


def test_a_gpu_without_room_for_the_cells_refuses_the_trial_before_uploading(prepared, monkeypatch):
    from scssl.train import start_training

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (100 * 2**20, 80 * 2**30))
    with pytest.raises(torch.cuda.OutOfMemoryError, match="0.10 of its 80.00 GiB are free"):
        start_training(SimCLR, SimCLR.Params(), prepared.X, TrainSettings(device="cuda"), AugmentationConfig())


def test_bfloat16_autocast_trains_to_a_useful_embedding(prepared):
    ref = prepared.reference_index
    reports = []
    model = train(SimCLR, SimCLR.Params(), prepared.X[ref], TrainSettings(epochs=3, batch_size=64, lr=1e-3,
                  precision="bf16"), AugmentationConfig(), seed=0, on_epoch=lambda m, r: reports.append(r))
    assert all(np.isfinite(r.loss) for r in reports) and reports[-1].loss < reports[0].loss
    assert embed(model, prepared.X).dtype == np.float32


@pytest.mark.slow
def test_compiled_modules_train_as_the_eager_ones(prepared):
    X = prepared.X[prepared.reference_index]
    eager, compiled = (train(SimCLR, SimCLR.Params(embedding_dim=8), X, TrainSettings(epochs=1, batch_size=64,
                                                                                      compile=flag),
                             AugmentationConfig(), seed=0) for flag in (False, True))
    # the same steps; fused kernels sum in another order, which moves values of about 1 by 1e-4 in an epoch
    np.testing.assert_allclose(embed(compiled, X), embed(eager, X), rtol=0, atol=5e-3)
