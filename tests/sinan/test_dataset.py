"""Dataset files: what collection records, the round trip, and bad files."""

from __future__ import annotations

import numpy as np
import pytest

from leanstack.errors import LeanstackError
from leanstack.sinan.dataset import ARRAYS, Dataset, collect


def test_collection_records_runs_costs_and_labels(tiny_dataset, app):
    m = tiny_dataset.meta
    assert m["app"] == app.name and m["tiers"] == app.tiers
    assert len(m["runs"]) == 3  # two steady levels + one diurnal
    assert m["collection_sim_s"] == 75.0 and m["collection_wall_s"] > 0
    assert set(np.unique(tiny_dataset.arrays["run"])) == {0, 1, 2}
    assert len(tiny_dataset) == sum(r["samples"] for r in m["runs"])
    # the explorer moved allocations off the maximum
    assert tiny_dataset.arrays["proposal"].sum(axis=1).min() < sum(
        s.max_cpu for s in app.services.values())


def test_round_trip(tiny_dataset, tmp_path):
    p = tiny_dataset.save(tmp_path / "d.npz")
    back = Dataset.load(p)
    assert back.meta == tiny_dataset.meta
    for k in ARRAYS:
        assert np.array_equal(back.arrays[k], tiny_dataset.arrays[k])
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_bad_dataset_files(tmp_path):
    with pytest.raises(LeanstackError, match="not found.*sinan collect"):
        Dataset.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(LeanstackError, match="not a Sinan dataset"):
        Dataset.load(tmp_path / "junk.npz")


def test_collect_needs_loads(app):
    with pytest.raises(LeanstackError, match="no collection loads"):
        collect(app, [], progress=False)
