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


def _resave(ds, path, meta=None, **arrays):
    import io
    import json

    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.array(json.dumps(meta if meta is not None else ds.meta)),
                        **{**ds.arrays, **arrays})
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.pop("tiers"), "meta: tiers: field required"),
    (lambda m: m.update(tiers=[]), "meta: tiers: list should have at least 1 item"),
    (lambda m: m.update(qos_ms=0), "meta: qos_ms"),
    (lambda m: m.update(channels=["rps"]), "meta: channels"),
])
def test_dataset_meta_is_checked_on_load(tiny_dataset, tmp_path, change, message):
    meta = dict(tiny_dataset.meta)
    change(meta)
    path = _resave(tiny_dataset, tmp_path / "d.npz", meta)
    with pytest.raises(LeanstackError, match=message) as e:
        Dataset.load(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def test_dataset_arrays_must_match_its_tiers(tiny_dataset, tmp_path):
    path = _resave(tiny_dataset, tmp_path / "d.npz",
                   proposal=tiny_dataset.arrays["proposal"][:, :2])
    with pytest.raises(LeanstackError, match="array 'proposal' has shape"):
        Dataset.load(path)


def test_train_on_a_dataset_without_tiers_is_one_line(tiny_dataset, tmp_path, monkeypatch,
                                                      capsys):
    from tests.microservices.helpers import run_cli

    meta = {k: v for k, v in tiny_dataset.meta.items() if k != "tiers"}
    path = _resave(tiny_dataset, tmp_path / "d.npz", meta)
    code, _, err = run_cli(monkeypatch, capsys, "sinan", "train", "--data", str(path), "--out",
                           str(tmp_path / "m"), "--epochs", "1", "--quiet")
    assert code == 2 and "meta: tiers: field required" in err and err.count("\n") == 1
