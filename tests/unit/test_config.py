"""Config: every bundled YAML validates; bad keys, values and overrides are named errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtl_core.arch import ARCHS
from mtl_core.config import (
    CONFIG_DIR,
    ExperimentConfig,
    FeaturesConfig,
    apply_overrides,
    bundled_config,
    config_names,
    flat_params,
    load_config,
    resolve_config_path,
    state_dir,
    validate_config,
)
from mtl_core.errors import ConfigError
from mtl_core.tasks import TASK_TYPES
from mtl_core.weighting import WEIGHTINGS
from mtl_core.weighting.static import Static

CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))

BASE = """\
data:
  source: synthetic
  synthetic: {n_rows: 100, dim: 4}
  tasks:
    - {name: a, column: y0, type: regression}
    - {name: b, column: y1, type: regression}
train: {epochs: 5}
"""


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# --------------------------------------------------------------------------- bundled configs


def test_configs_folder_is_not_empty():
    # Guards the parametrization below against silently testing nothing.
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_bundled_config_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.task_names
    assert set(cfg.task_weights()) == set(cfg.task_names)
    # The bare name resolves to the same file.
    assert load_config(path.stem) == cfg
    params = flat_params(cfg)
    for name in cfg.task_names:
        assert f"tasks.{name}.weight" in params


def test_unknown_config_name_lists_bundled_ones():
    with pytest.raises(ConfigError, match="no-such-config") as info:
        load_config("no-such-config")
    assert "default" in str(info.value)


# --------------------------------------------------------------------------- bad keys and values


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("model: {hiden: [3]}\n", "model.hiden"),
        ("colour: blue\n", "colour"),
        ("search: {lr: {low: 0.1, high: 1.0, step: 2}}\n", "search.lr.step"),
    ],
)
def test_unknown_key_names_file_and_key(tmp_path, extra, key):
    path = write(tmp_path, BASE + extra)
    msg = config_error(path)
    assert str(path) in msg
    assert f"'{key}'" in msg
    assert "unknown key" in msg


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ("model: {activation: swish}\n", "model.activation", "'relu', 'gelu', 'tanh' or 'silu'"),
        ("model: {hidden: [8, 0]}\n", "model", "hidden sizes must be positive"),
        ("loss: {l1: -0.1}\n", "loss.l1", "greater than or equal to 0"),
        ("search: {lr: {low: 1.0, high: 0.1}}\n", "search.lr", "must be below high"),
        ("search: {l1: {low: 0.0, high: 0.1}}\n", "search.l1", "log range needs low > 0"),
    ],
)
def test_wrong_value_names_file_key_and_expectation(tmp_path, extra, key, expected):
    msg = config_error(write(tmp_path, BASE + extra))
    assert str(tmp_path / "exp.yaml") in msg
    assert f"'{key}'" in msg
    assert expected in msg


def test_wrong_type_shows_the_offending_value(tmp_path):
    msg = config_error(write(tmp_path, BASE), ["train.epochs=many"])
    assert "'train.epochs'" in msg
    assert "valid integer" in msg
    assert "'many'" in msg


def test_missing_file_invalid_yaml_and_non_mapping_are_config_errors(tmp_path):
    missing = tmp_path / "absent.yaml"
    assert "absent.yaml" in config_error(missing)
    bad = write(tmp_path, "data: [\n", "bad.yaml")
    assert str(bad) in config_error(bad) and "invalid YAML" in config_error(bad)
    listy = write(tmp_path, "- 1\n- 2\n", "list.yaml")
    assert "mapping" in config_error(listy)
    with pytest.raises(ConfigError, match="<mem>"):
        validate_config([1, 2], source="<mem>")


def test_required_sections_are_named(tmp_path):
    msg = config_error(write(tmp_path, "data: {source: synthetic}\n"))
    assert "'data.tasks'" in msg and "required" in msg


def test_file_source_needs_a_path(tmp_path):
    text = "data:\n  source: file\n  tasks: [{name: a, column: y, type: binary}]\n"
    assert "needs 'path'" in config_error(write(tmp_path, text))


def test_binarize_must_name_a_generated_target(tmp_path):
    msg = config_error(write(tmp_path, BASE), ["data.synthetic.binarize=[y7]"])
    assert "binarize" in msg and "y7" in msg


# --------------------------------------------------------------------------- registered names


@pytest.mark.parametrize(
    ("override", "key", "registry"),
    [
        ("model.arch=nope", "model.arch", ARCHS),
        ("loss.weighting=nope", "loss.weighting", WEIGHTINGS),
        ("data.tasks=[{name: a, column: y0, type: nope}]", "data.tasks.0.type", TASK_TYPES),
    ],
    ids=["arch", "weighting", "task-type"],
)
def test_unregistered_name_is_a_one_line_error_listing_the_allowed_ones(
    tmp_path, override, key, registry
):
    path = write(tmp_path, BASE)
    msg = config_error(path, [override])
    assert str(path) in msg
    assert f"'{key}'" in msg
    assert "'nope'" in msg
    for name in registry:
        assert f"'{name}'" in msg
    assert "\n" not in msg
    # The same from a mapping already in memory.
    raw = apply_overrides(yaml.safe_load(BASE), [override])
    with pytest.raises(ConfigError) as info:
        validate_config(raw, source="<mem>")
    assert f"'{key}'" in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("<mem>: ")


def test_registered_names_are_accepted(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["model.arch=shared_bottom", "loss.weighting=static"])
    assert (cfg.model.arch, cfg.loss.weighting) == ("shared_bottom", "static")
    assert cfg.model == load_config(write(tmp_path, BASE)).model  # the defaults


class _Learned(Static):
    learns_weights = True


@pytest.fixture
def learned_weighting():
    WEIGHTINGS.register("learned_test")(_Learned)
    yield "learned_test"
    del WEIGHTINGS["learned_test"]


def test_loss_weights_are_refused_with_a_non_static_weighting(tmp_path, learned_weighting):
    path = write(tmp_path, BASE)
    assert (
        load_config(path, [f"loss.weighting={learned_weighting}"]).loss.weighting == "learned_test"
    )
    msg = config_error(path, [f"loss.weighting={learned_weighting}", "loss.weights={a: 2, b: 1}"])
    assert "loss.weights" in msg
    assert "'static' only" in msg
    assert f"'{learned_weighting}'" in msg
    assert "\n" not in msg


# --------------------------------------------------------------------------- features


def test_features_default_to_standard_scaling_and_one_hot(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.features == FeaturesConfig()
    assert (cfg.features.numeric, cfg.features.categorical) == ("standard", "onehot")
    assert cfg.features.numeric_embedding == "none"
    assert cfg.features.preprocessing_key() == ("standard", "onehot")
    cfg = load_config(
        write(tmp_path, BASE),
        [
            "features.numeric=quantile",
            "features.categorical=embedding",
            "features.numeric_embedding=piecewise_linear",
            "features.embedding_dim=8",
        ],
    )
    assert cfg.features.preprocessing_key() == ("quantile", "embedding")
    assert (cfg.features.numeric_embedding, cfg.features.embedding_dim) == ("piecewise_linear", 8)


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("features.numeric=log", "features.numeric", "'standard' or 'quantile'"),
        ("features.categorical=hash", "features.categorical", "'onehot' or 'embedding'"),
        (
            "features.numeric_embedding=fourier",
            "features.numeric_embedding",
            "'none', 'periodic' or 'piecewise_linear'",
        ),
        ("features.n_bins=1", "features.n_bins", "greater than or equal to 2"),
        ("features.embeding_dim=4", "features.embeding_dim", "unknown key"),
    ],
)
def test_bad_features_are_named(tmp_path, override, key, expected):
    msg = config_error(write(tmp_path, BASE), [override])
    assert f"'{key}'" in msg
    assert expected in msg


# --------------------------------------------------------------------------- overrides


def test_overrides_are_applied_and_typed(tmp_path):
    path = write(tmp_path, BASE)
    cfg = load_config(
        path,
        [
            "train.epochs=3",
            "model.hidden=[8, 4]",
            "loss.l1=1e-3",  # YAML 1.1 reads this as a string; pydantic still makes it 0.001
            "data.synthetic.correlation=0.5",
            "tracking.experiment=other",
            "loss.penalty_scope=all",
        ],
    )
    assert cfg.train.epochs == 3
    assert cfg.model.hidden == [8, 4]
    assert cfg.loss.l1 == pytest.approx(1e-3)
    assert cfg.data.synthetic.correlation == 0.5
    assert cfg.tracking.experiment == "other"
    assert cfg.loss.penalty_scope == "all"
    # The file itself is untouched.
    assert load_config(path).train.epochs == 5


def test_apply_overrides_does_not_mutate_its_input():
    raw = {"train": {"epochs": 5}}
    out = apply_overrides(raw, ["train.epochs=7", "model.dropout=0.1"])
    assert raw == {"train": {"epochs": 5}}
    assert out == {"train": {"epochs": 7}, "model": {"dropout": 0.1}}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs", "expected key=value"),
        ("=3", "expected key=value"),
        ("train.epochs=[", "not valid YAML"),
        ("train.epochs.x=1", "'epochs' is not a section"),
        ("train.nope=1", "'train.nope': unknown key"),
        ("train.epochs=-1", "'train.epochs'"),
        ("data.synthetic.correlation=2", "'data.synthetic.correlation'"),
    ],
)
def test_bad_override_is_a_config_error(tmp_path, override, expected):
    msg = config_error(write(tmp_path, BASE), [override])
    assert expected in msg


def test_override_errors_are_one_line(tmp_path):
    # errors.py promises one-line messages; the CLI prints exactly that line.
    msg = config_error(write(tmp_path, BASE), ["train.epochs=["])
    assert "\n" not in msg


# --------------------------------------------------------------------------- tasks and weights


def test_duplicate_task_names_are_rejected(tmp_path):
    text = BASE.replace("{name: b, column: y1", "{name: a, column: y1")
    msg = config_error(write(tmp_path, text))
    assert "duplicate task names ['a']" in msg


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ("{a: 1.0, b: -0.5}", "must be >= 0"),
        ("{a: 1.0}", "must match the tasks"),
        ("{a: 1.0, b: 1.0, c: 1.0}", "must match the tasks"),
        ("{a: 1.0, c: 1.0}", "must match the tasks"),
        ("{a: 0.0, b: 0.0}", "must not all be zero"),
    ],
)
def test_bad_loss_weights_are_rejected(tmp_path, weights, expected):
    msg = config_error(write(tmp_path, BASE + f"loss: {{weights: {weights}}}\n"))
    assert "loss.weights" in msg
    assert expected in msg


def test_task_weights_default_to_one(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.task_weights() == {"a": 1.0, "b": 1.0}
    cfg = load_config(write(tmp_path, BASE), ["loss.weights={a: 2, b: 0.5}"])
    assert cfg.task_weights() == {"a": 2.0, "b": 0.5}


# --------------------------------------------------------------------------- flat params


def test_flat_params_keys_are_stable(tmp_path):
    path = write(tmp_path, BASE)
    plain = flat_params(load_config(path))
    weighted = flat_params(
        load_config(path, ["loss.weights={a: 2, b: 0.5}", "loss.l1=0.01", "train.lr=0.1"])
    )
    # Same keys whatever the values: MLflow's compare view lines runs up by key.
    assert plain.keys() == weighted.keys()
    for key in (
        "tasks.a.weight",
        "tasks.a.type",
        "tasks.a.column",
        "tasks.b.weight",
        "loss.l1",
        "loss.l2",
        "loss.penalty_scope",
        "train.lr",
        "train.epochs",
        "model.hidden",
        "model.arch",
        "loss.weighting",
        "features.numeric",
        "features.categorical",
        "features.numeric_embedding",
        "data.synthetic.correlation",
        "search.lr.low",
        "tracking.experiment",
    ):
        assert key in plain
    assert not any(k.startswith(("data.tasks", "loss.weights")) for k in plain)
    assert all(isinstance(v, str) for v in plain.values())
    assert plain["tasks.a.weight"] == "1.0"
    assert weighted["tasks.a.weight"] == "2.0" and weighted["tasks.b.weight"] == "0.5"
    assert plain["tasks.b.column"] == "y1" and plain["tasks.b.type"] == "regression"
    assert weighted["loss.l1"] == "0.01" and weighted["train.lr"] == "0.1"
    assert json.loads(plain["model.hidden"]) == [64, 64]


def test_state_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_STATE_DIR", str(tmp_path / "st"))
    assert state_dir() == (tmp_path / "st").resolve()


# --------------------------------------------------------------------------- hardening


def _bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" document: each level repeats the previous one ``width`` times."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    import time

    path = write(tmp_path, BASE + _bomb())
    start = time.perf_counter()
    msg = config_error(path)
    assert time.perf_counter() - start < 5
    assert str(path) in msg and "aliases expand" in msg
    assert len(msg) < 400 and "\n" not in msg
    # The same bomb in an override value, in YAML's flow style.
    items = ["&b0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&b{i} [" + ", ".join([f"*b{i - 1}"] * 9) + "]" for i in range(1, 10)]
    msg = config_error(write(tmp_path, BASE), [f"model.hidden=[{', '.join(items)}]"])
    assert "aliases expand" in msg and len(msg) < 400


def test_a_few_aliases_are_fine(tmp_path):
    text = BASE + "model: {hidden: &h [8, 8]}\nsearch: {width: *h}\n"
    cfg = load_config(write(tmp_path, text))
    assert cfg.model.hidden == [8, 8] and cfg.search.width == [8, 8]


def test_recursive_aliases_and_deep_nesting_are_config_errors(tmp_path):
    assert "recursive alias" in config_error(write(tmp_path, BASE + "colour: &c [*c]\n"))
    deep = BASE + "colour: " + "[" * 5000 + "]" * 5000 + "\n"
    assert "invalid YAML" in config_error(write(tmp_path, deep, "deep.yaml"))


def test_a_huge_config_file_is_refused_unread(tmp_path):
    path = write(tmp_path, BASE + "# " + "x" * (1 << 20) + "\n")
    assert "limit is 1 MiB" in config_error(path)


def test_error_messages_truncate_a_huge_offending_value(tmp_path):
    huge = "[" + ", ".join(["wide"] * 20_000) + "]"
    msg = config_error(write(tmp_path, BASE), [f"model.hidden={huge}"])
    assert "'model.hidden.0'" in msg and "'wide'" in msg
    assert "more error(s)" in msg
    assert len(msg) < 1000
    msg = config_error(write(tmp_path, BASE), ["model.activation=" + "x" * 100_000])
    assert len(msg) < 500


def _number_keys(model: type, prefix: str = "") -> list[tuple[str, bool]]:
    """Every int or float field under ``model`` as (dotted key, is a list), found by walking it."""
    import typing

    from pydantic import BaseModel

    found = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        args = [info.annotation]
        is_list = False
        while args:
            tp = args.pop()
            origin = typing.get_origin(tp)
            if origin is list:
                is_list = True
            if origin is not None:
                args.extend(typing.get_args(tp))
            elif isinstance(tp, type) and issubclass(tp, BaseModel):
                if tp.__name__ != "TaskConfig":
                    found += _number_keys(tp, f"{key}.")
            elif tp in (int, float):
                found.append((key, is_list))
    return sorted(set(found))


NUMBER_KEYS = _number_keys(ExperimentConfig)


def test_every_number_key_is_found():
    keys = {k for k, _ in NUMBER_KEYS}
    assert {"search.n_trials", "train.epochs", "data.synthetic.n_rows", "search.lr.low"} <= keys
    assert {"search.width", "model.hidden", "train.lr", "data.val_fraction"} <= keys
    assert len(keys) > 40


@pytest.mark.parametrize(("key", "is_list"), NUMBER_KEYS, ids=[k for k, _ in NUMBER_KEYS])
def test_a_boolean_is_not_a_number(tmp_path, key, is_list):
    path = write(
        tmp_path,
        BASE + "search: {l1: {low: 1.0e-6, high: 1.0e-2}, dropout: {low: 0.1, high: 0.2}}\n",
    )
    value = "[true]" if is_list else "true"
    if key.startswith("loss.weights"):
        value = "{a: true, b: 1}"
    msg = config_error(path, [f"{key}={value}"])
    assert key in msg and "got a boolean" in msg, msg


def test_numbers_from_overrides_still_parse(tmp_path):
    cfg = load_config(
        write(tmp_path, BASE), ["search.n_trials=5", "train.lr=1e-3", "search.width=[8, 16]"]
    )
    assert cfg.search.n_trials == 5 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.search.width == [8, 16]


def test_split_fractions_must_leave_half_for_training(tmp_path):
    path = write(tmp_path, BASE)
    msg = config_error(path, ["data.val_fraction=0.49", "data.test_fraction=0.49"])
    assert "data.val_fraction (0.49)" in msg and "data.test_fraction (0.49)" in msg
    assert "at most 0.5" in msg and "\n" not in msg
    cfg = load_config(path, ["data.val_fraction=0.25", "data.test_fraction=0.25"])
    assert cfg.data.val_fraction + cfg.data.test_fraction == 0.5


@pytest.mark.parametrize("key", ["features", "coerce_numeric", "categorical"])
def test_a_column_listed_twice_is_a_config_error(tmp_path, key):
    msg = config_error(write(tmp_path, BASE), [f"data.{key}=[x0, x1, x0]"])
    assert f"data.{key} lists ['x0'] more than once" in msg


def test_a_column_cannot_be_both_coerced_and_categorical(tmp_path):
    msg = config_error(write(tmp_path, BASE), ["data.coerce_numeric=[x0]", "data.categorical=[x0]"])
    assert "both list ['x0']" in msg


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu0", "cpu "])
def test_an_unknown_device_is_a_config_error(tmp_path, device):
    msg = config_error(write(tmp_path, BASE), [f"train.device='{device}'"])
    assert "'train.device'" in msg and "expected 'auto', 'cpu', 'cuda' or 'cuda:N'" in msg


def test_known_devices_validate(tmp_path):
    for device in ("auto", "cpu", "cuda", "cuda:3"):  # cuda:3 existing is checked before a run
        assert load_config(write(tmp_path, BASE), [f"train.device={device}"]).train.device == device


# --------------------------------------------------------------------------- config names


def test_a_name_never_reaches_outside_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Through configs/, these names used to reach the repository's other files.
    for name in ("../README.md", "../pyproject.toml", "../configs/default.yaml"):
        with pytest.raises(ConfigError, match="config file not found"):
            resolve_config_path(name)
        assert bundled_config(name) is None
    assert resolve_config_path("default") == CONFIG_DIR / "default.yaml"
    assert resolve_config_path("default.yaml") == CONFIG_DIR / "default.yaml"
    # A bundled name wins over a file of that name in the working directory.
    (tmp_path / "default").write_text("not: a config\n")
    assert resolve_config_path("default") == CONFIG_DIR / "default.yaml"
    # An explicit path is still read as given (the mtl command's route).
    own = write(tmp_path, BASE, "own.yaml")
    assert resolve_config_path(str(own)) == own


def test_config_names_are_the_bundled_stems():
    assert config_names() == [p.stem for p in CONFIGS]
    assert all(bundled_config(n) == CONFIG_DIR / f"{n}.yaml" for n in config_names())
