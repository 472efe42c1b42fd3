"""What a plain install holds, and what a uri whose filesystem is not installed says."""

from __future__ import annotations

import ast
import asyncio
import importlib
import tomllib
from pathlib import Path

import pytest

from loaders.storage.backends import Backends, filesystem_class
from loaders.errors import LoaderError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def gcsfs_missing(monkeypatch):
    """gs:// and gcs:// as on an install without gcsfs: the import fsspec tries fails."""
    registry = importlib.import_module("fsspec.registry")  # `fsspec.registry` is also a mapping's name
    for protocol in ("gs", "gcs"):
        monkeypatch.setitem(registry.known_implementations, protocol,
                            {"class": "gcsfs_not_installed.GCSFileSystem",
                             "err": "Please install gcsfs to access Google Storage"})
        monkeypatch.delitem(registry._registry, protocol, raising=False)


def test_a_missing_filesystem_is_one_line_naming_the_extra(gcsfs_missing):
    with pytest.raises(LoaderError) as error:
        filesystem_class("gs")
    assert str(error.value) == "gs:// uris need a package that is not installed: pip install 'omnimae[gcs]'"
    with pytest.raises(LoaderError, match=r"pip install 'omnimae\[gcs\]'"):
        Backends(asyncio.new_event_loop(), None, None, 4).filesystem("gcs")


def test_the_trainer_stops_on_a_missing_extra_before_reading(gcsfs_missing):
    from omnimae.config import load_config
    from omnimae.data import prepare_data
    from omnimae.parallel import DistInfo

    cfg = load_config(None, ["data.video.root=gs://bucket/ssv2", "data.image.root="])
    with pytest.raises(LoaderError, match=r"^gs:// uris need .*pip install 'omnimae\[gcs\]'$"):
        prepare_data(cfg, DistInfo())


def test_extras_split_what_the_base_install_does_not_need():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    for heavy in ("dali", "matplotlib", "s3fs", "gcsfs"):
        assert heavy not in base
    extras = project["optional-dependencies"]
    assert extras["s3"] == ["s3fs>=2024.2"] and extras["gcs"] == ["gcsfs>=2024.2"]
    assert any("nvidia-dali" in r for r in extras["gpu"])
    # The tests need S3 (moto), GCS, DALI's CPU decoder and the benchmark plots.
    assert "omnimae[s3,gcs,gpu,bench]" in extras["dev"]


def test_matplotlib_is_imported_only_inside_the_functions_that_plot():
    for path in [*REPO.glob("omnimae/**/*.py"), *REPO.glob("loaders/**/*.py"), *REPO.glob("benchmarks/*.py")]:
        for node in ast.parse(path.read_text()).body:  # module level only
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "matplotlib" for n in names), path
