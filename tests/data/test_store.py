"""The prepared data set on disk (``prepare_store``, ``CellStore``): what it holds, when it is reused, how a training
epoch streams from it."""

import dataclasses
import json
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.neighbors import KNeighborsClassifier

from scssl.augment import AugmentationConfig
from scssl.data import Cells, DataError, DatasetSpec, prepare, resolve
from scssl.data.prepare import prepare_store
from scssl.data.store import CellStore, loader_buffer
from scssl.methods import SimCLR
from scssl.train import TrainSettings, embed, train
from scssl.train.loop import start_training


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    """Real cells: the built-in Hao 2021 PBMC RNA (1,200 cells, 3 donors, one of them the query)."""
    return dataclasses.replace(resolve(DatasetSpec(name="pbmc_hao2021"), tmp_path_factory.mktemp("d")), n_hvgs=300)


@pytest.fixture(scope="module")
def store(spec, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys.modules["scssl.data.prepare"], "_CHUNK_CELLS", 97)  # many chunks, each staged apart
        return prepare_store(spec, tmp_path_factory.mktemp("stores"))


@pytest.mark.slow  # the store is written once for these: 12 s
def test_the_store_holds_exactly_what_preparing_in_memory_gives(spec, store):
    in_memory = prepare(spec)
    assert store.obs().equals(in_memory.obs)
    assert list(store.genes) == list(in_memory.genes) and store.notes == in_memory.notes
    assert store.n_cells == {"reference": len(in_memory.reference_index), "query": len(in_memory.query_index)}
    for part in ("reference", "query"):
        cells = store.cells(part)
        rows = cells.obs_column("row")
        assert sorted(rows) == sorted(np.flatnonzero(in_memory.obs["split"] == part))
        assert not np.array_equal(rows, np.sort(rows))  # pre-shuffled
        everything = np.arange(cells.n_cells)
        assert (cells.read(everything) != in_memory.X[rows]).nnz == 0
        assert (cells.of_layer("counts").read(everything) != in_memory.counts[rows]).nnz == 0
        assert np.array_equal(cells.obs_column("batch_code"), in_memory.batch_codes[rows])
        some = np.array([7, 0, cells.n_cells - 1, 3])  # any rows, in any order
        assert (cells.read(some) != in_memory.X[rows[some]]).nnz == 0


@pytest.mark.slow  # the store is written once for these: 12 s
def test_a_store_is_reused_for_the_same_file_and_settings_and_written_anew_for_others(spec, store, tmp_path,
                                                                                     monkeypatch):
    root = store.path.parent
    written = (store.path / "scssl.json").stat().st_mtime_ns
    with monkeypatch.context() as patch:  # reused without reading the file (an atlas's obs takes a while)
        patch.setattr(sys.modules["scssl.data.prepare"], "read_h5ad_backed", None)
        assert prepare_store(spec, root).path == store.path
    assert (store.path / "scssl.json").stat().st_mtime_ns == written
    other = prepare_store(dataclasses.replace(spec, n_hvgs=200), tmp_path)
    assert other.path.name != store.path.name and len(other.genes) == 200
    partial = tmp_path / "interrupted"  # a write stopped before its meta data: never read as a store
    (partial / "reference.zarr").mkdir(parents=True)
    assert not CellStore.exists(partial)
    meta = json.loads((other.path / "scssl.json").read_text())
    (other.path / "scssl.json").write_text(json.dumps({**meta, "format": 0}))  # an older format: written anew
    assert not CellStore.exists(other.path)


def test_multimodal_data_is_refused_before_anything_is_read(tmp_path):
    spec = resolve(DatasetSpec(name="bmmc_cite"), tmp_path)
    with pytest.raises(DataError, match="only RNA .h5ad data sets are prepared to disk") as caught:
        prepare_store(spec, tmp_path)
    assert caught.value.key == "modality"


@pytest.mark.slow  # the store is written once for these: 12 s
def test_an_epoch_streams_every_cell_once_in_an_order_its_seed_fixes(store):
    cells = store.cells("reference")
    epoch = [rows for _, rows in cells.minibatches(1, seed=3)]
    assert sorted(np.concatenate(epoch)) == list(range(cells.n_cells))
    batches = list(cells.minibatches(64, seed=3))
    seen = np.concatenate([rows for _, rows in batches])
    assert len(batches) == cells.n_cells // 64 and len(set(seen)) == len(seen)  # the last short batch dropped
    for matrix, rows in batches[:3]:
        assert (matrix != cells.read(rows)).nnz == 0
    again = np.concatenate([rows for _, rows in cells.minibatches(64, seed=3)])
    other = np.concatenate([rows for _, rows in cells.minibatches(64, seed=4)])
    assert np.array_equal(seen, again) and not np.array_equal(seen, other)


@pytest.mark.parametrize("batch_size", [1, 7, 64, 100, 256, 1000, 1024, 3000])
def test_the_loader_buffer_is_whole_mini_batches_of_whole_chunks(batch_size):
    chunk, preload = loader_buffer(batch_size)
    assert (chunk * preload) % batch_size == 0 and chunk * preload >= batch_size and preload <= 32


@pytest.mark.slow  # the store is written once for these: 12 s
def test_a_network_trained_from_the_store_beats_the_untrained_one_as_one_trained_in_memory_does(spec, store):
    reference, query = Cells.of_store(store, "reference"), Cells.of_store(store, "query")
    codes = store.obs()["label"].cat.codes.to_numpy()
    labels = {part: codes[store.cells(part).obs_column("row")] for part in ("reference", "query")}
    settings = TrainSettings(epochs=10, batch_size=64, lr=1e-3)
    untrained = start_training(SimCLR, SimCLR.Params(), reference, settings, AugmentationConfig(), seed=0)
    assert untrained.steps_per_epoch == len(list(untrained.batches(1))) == reference.n_cells // 64

    def accuracy(model, reference, query, labels) -> float:
        knn = KNeighborsClassifier(15).fit(embed(model, reference), labels[0])
        return float((knn.predict(embed(model, query)) == labels[1]).mean())

    streamed = accuracy(train(SimCLR, SimCLR.Params(), reference, settings, AugmentationConfig(), seed=0),
                        reference, query, (labels["reference"], labels["query"]))
    assert streamed > accuracy(untrained.model, reference, query, (labels["reference"], labels["query"])) + 0.05
    data = prepare(spec)
    X, ref, qry = data.X, data.reference_index, data.query_index
    in_memory = accuracy(train(SimCLR, SimCLR.Params(), X[ref], settings, AugmentationConfig(), seed=0), X[ref],
                         X[qry], (data.label_codes[ref], data.label_codes[qry]))
    assert streamed > in_memory - 0.05  # measured: 0.835 and 0.850


@pytest.mark.slow  # the store is written once for these: 12 s
def test_stored_cells_embed_as_the_same_cells_in_memory(spec, store):
    in_memory = prepare(spec)
    cells = Cells.of_store(store, "query")
    model = train(SimCLR, SimCLR.Params(), in_memory.X[in_memory.reference_index], TrainSettings(epochs=1),
                  AugmentationConfig(), seed=0)
    rows = store.cells("query").obs_column("row")
    torch.testing.assert_close(torch.from_numpy(embed(model, cells)), torch.from_numpy(embed(model, in_memory.X[rows])))


@pytest.mark.slow  # the store is written once for these: 12 s
def test_stored_cells_pickle_as_their_fields_and_read_the_same_rows_where_unpickled(store):
    import pickle

    cells = store.cells("reference")
    rows = np.array([5, 1, 2])
    before = cells.read(rows)  # opens and caches the zarr groups
    payload = pickle.dumps(cells)
    assert b"_groups" not in payload and b"_offsets" not in payload  # the open groups stay behind: a Ray task gets the path
    assert (pickle.loads(payload).read(rows) != before).nnz == 0


def test_a_reader_thread_stops_with_a_caller_that_stops_early():
    import threading

    from scssl.data.store import ahead

    before = threading.active_count()
    items = ahead(iter(range(100)), depth=1)
    assert next(items) == 0 and threading.active_count() == before + 1
    items.close()
    assert threading.active_count() == before
    with pytest.raises(ValueError, match="broken"):
        list(ahead(int(x) for x in ["1", "broken"]))


@pytest.mark.slow  # the store is written once for these: 12 s
def test_from_store_from_cells_on_a_data_set_is_prepared_to_disk_and_held_in_memory_as_a_sample(spec, store):
    in_memory = prepare(spec)
    n_cells = len(in_memory.obs)
    sampled = prepare(dataclasses.replace(spec, store_from_cells=n_cells, evaluation_cells=600),
                      store_root=store.path.parent)
    assert sampled.store.path == store.path  # where the cells are held is no part of the store's key
    taken = sampled.obs["split"].value_counts()
    assert taken.sum() in (600, 601)
    assert abs(taken["reference"] / taken.sum() - store.n_cells["reference"] / n_cells) < 0.01  # in proportion
    for part in ("reference", "query"):  # each part's first cells (the store is shuffled), as prepared in memory
        rows = store.cells(part).obs_column("row")[:taken[part]]
        mine = (sampled.obs["split"] == part).to_numpy()
        assert (sampled.X[mine] != in_memory.X[rows]).nnz == 0
        assert (sampled.counts[mine] != in_memory.counts[rows]).nnz == 0
        assert sampled.obs[mine][["batch", "label"]].equals(in_memory.obs.iloc[rows][["batch", "label"]])
    assert np.array_equal(sampled.reference_index, np.arange(taken["reference"]))
    assert any("the tasks score 60" in note for note in sampled.notes)
    assert prepare(dataclasses.replace(spec, store_from_cells=n_cells + 1), store_root=store.path.parent).store is None


@pytest.mark.slow  # the store is written once for these: 12 s
def test_methods_train_on_every_stored_cell_and_trials_score_the_sample_with_validation_labels_hidden(spec, store):
    from scssl.data.store import StoredCells
    from scssl.evaluate.shared import SharedData
    from scssl.stages import TuneSettings

    sampled = prepare(dataclasses.replace(spec, store_from_cells=1, evaluation_cells=600), store_root=store.path.parent)
    shared = SharedData.build(sampled, TuneSettings(validation_fraction=0.3), with_graphs=False)
    training, scored = shared.trial_data(SimCLR)
    n_reference, k = store.n_cells["reference"], len(sampled.reference_index)
    assert isinstance(training.X, StoredCells) and training.n_cells == n_reference > k
    stored_labels = store.cells("reference").obs_column("label_code")
    hidden = shared.is_validation
    assert hidden.any() and (training.labels[:k][hidden] == -1).all()
    assert np.array_equal(training.labels[:k][~hidden], stored_labels[:k][~hidden])
    assert np.array_equal(training.labels[k:], stored_labels[k:])
    assert scored.n_cells == k and (scored.materialised().X != sampled.X[sampled.reference_index]).nnz == 0
    every = shared.training_data("all")  # the reference cells, then the query cells
    assert every.n_cells == n_reference + store.n_cells["query"]
    assert (every.X.read(np.arange(n_reference - 2, n_reference + 3))
            != sp.vstack([training.X.read(np.arange(n_reference - 2, n_reference)),
                          store.cells("query").read(np.arange(3))])).nnz == 0
    assert np.array_equal(every.labels, np.concatenate([stored_labels, store.cells("query").obs_column("label_code")]))
