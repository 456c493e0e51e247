"""The stack benchmarks' configs: valid, and deployable the way deployments require.

The benchmarks that need the real stack (``bench.pool``, ``bench.crash_drill``) are not
run by the test suite (they take minutes); this keeps their set-up from drifting away
from what ``mtl deploy`` accepts, as it once did when deployments became limited to the
configs bundled in ``configs/``.
"""

from __future__ import annotations

import importlib

import pytest

import mtl_core.config
from bench import stack
from flows import deploy
from mtl_core.config import ExperimentConfig


@pytest.mark.parametrize("module", ["bench.pool", "bench.crash_drill"])
def test_stack_benchmark_config_is_valid_and_deployable(module, tmp_path, monkeypatch):
    bench = importlib.import_module(module)
    ExperimentConfig.model_validate(bench.CONFIG)
    # A stand-in for the repository, so that other tests never see the file in configs/.
    (tmp_path / "configs").mkdir()
    monkeypatch.setattr(stack, "REPO", tmp_path)
    monkeypatch.setattr(mtl_core.config, "CONFIG_DIR", tmp_path / "configs")
    monkeypatch.setattr(deploy, "CONFIG_DIR", tmp_path / "configs")
    with stack.bundled_config("bench-x", bench.CONFIG) as path:
        assert path.parent == tmp_path / "configs"
        assert deploy._bundled_name(str(path)) == "bench-x"
        assert mtl_core.config.load_config("bench-x").model_dump() == (
            ExperimentConfig.model_validate(bench.CONFIG).model_dump()
        )
    assert not path.exists()
    # What the benchmarks did before: a config outside configs/ is refused.
    elsewhere = tmp_path / "bench.yaml"
    elsewhere.write_text("{}")
    with pytest.raises(mtl_core.errors.ConfigError, match="a deployment runs a config of configs/"):
        deploy._bundled_name(str(elsewhere))
