"""Fixtures shared by the tests."""

import pytest


@pytest.fixture
def datasets_dir(tmp_path, monkeypatch):
    d = tmp_path / "datasets"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(d))
    yield d
    # the default names point back at the default location for other tests
    monkeypatch.undo()
    from instseg.data.datasets import register_all_synthetic

    register_all_synthetic()
