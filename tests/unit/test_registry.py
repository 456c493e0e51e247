"""Registries: lookups by name, errors that list the known names, no silent overwrites."""

from __future__ import annotations

import pytest

from mtl_core.arch import ARCHS, Architecture
from mtl_core.errors import ConfigError
from mtl_core.registry import Registry
from mtl_core.tasks import TASK_TYPES, Task
from mtl_core.weighting import WEIGHTINGS, Weighting


@pytest.fixture
def colours() -> Registry:
    reg: Registry = Registry("colour", "paint.colour")

    @reg.register("red")
    class Red:
        pass

    reg.register("blue")(object)
    return reg


def test_register_adds_and_returns_the_member(colours):
    @colours.register("green")
    class Green:
        pass

    assert colours["green"] is Green  # the decorator hands the class back unchanged
    assert colours.lookup("green") is Green
    assert sorted(colours) == ["blue", "green", "red"]


def test_unknown_name_is_a_config_error_naming_key_and_known_names(colours):
    with pytest.raises(ConfigError) as info:
        colours.lookup("mauve")
    msg = str(info.value)
    assert "paint.colour" in msg
    assert "'mauve'" in msg
    assert "unknown colour" in msg
    for name in ("red", "blue"):
        assert f"'{name}'" in msg
    assert "\n" not in msg


def test_unknown_name_is_not_a_key_error(colours):
    # A ConfigError reaches the CLI as one line; a bare KeyError would be a traceback.
    with pytest.raises(ConfigError):
        colours.lookup("mauve")
    assert not issubclass(ConfigError, KeyError)


def test_double_registration_raises_and_keeps_the_first(colours):
    first = colours["red"]
    with pytest.raises(ValueError, match="colour 'red' is registered twice"):
        colours.register("red")(object)
    assert colours["red"] is first


@pytest.mark.parametrize(
    ("registry", "key", "base", "names"),
    [
        (TASK_TYPES, "data.tasks[].type", Task, {"binary", "multiclass", "regression"}),
        (ARCHS, "model.arch", Architecture, {"shared_bottom"}),
        (WEIGHTINGS, "loss.weighting", Weighting, {"static"}),
    ],
    ids=["tasks", "archs", "weightings"],
)
def test_project_registries(registry, key, base, names):
    assert names <= set(registry)
    assert registry.key == key
    for name, member in registry.items():
        assert issubclass(member, base), name
    with pytest.raises(ConfigError) as info:
        registry.lookup("nope")
    assert key in str(info.value)
    for name in registry:
        assert f"'{name}'" in str(info.value)
