"""Engine settings: ``culm.Settings`` refuses bad values, ``culm.configure`` changes the process's
defaults (the runtimes created after it take a copy), ``CULM_*`` variables give them first."""

from __future__ import annotations

import pytest

import culm
from culm.core import settings as cs
from culm.errors import SettingsError


@pytest.fixture
def fresh_defaults(monkeypatch):
    """The process's defaults as if read for the first time (restored after the test)."""
    monkeypatch.setattr(cs, "_process", None)
    for var in cs.ENV.values():
        monkeypatch.delenv(var, raising=False)
    yield


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"gateway_strategy": 3}, "Settings.gateway_strategy must be 1 (ONLY) or 2 (FIRST)"),
        ({"gateway_strategy": True}, "Settings.gateway_strategy must be"),
        ({"rerun_limit": -1}, "Settings.rerun_limit must be an integer >= 0, got -1"),
        ({"expr_func": "boolrule"}, "Settings.expr_func must be a function"),
        ({"render_nested_objects": "yes"}, "Settings.render_nested_objects must be True or False, got 'yes'"),
        ({"lease_seconds": 0}, "Settings.lease_seconds must be a number of seconds above 0, got 0"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(kwargs, fragment):
    with pytest.raises(SettingsError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        culm.Settings(**kwargs)


def test_configure_changes_the_defaults_of_runtimes_created_after_it(fresh_defaults):
    before = culm.Runtime("memory://")
    previous = culm.configure(gateway_strategy=culm.GATEWAY_STRATEGY_FIRST, render_nested_objects=True)
    assert previous == {"gateway_strategy": culm.GATEWAY_STRATEGY_ONLY, "render_nested_objects": False}
    after, own = culm.Runtime("memory://"), culm.Runtime("memory://", settings=culm.Settings())
    try:
        assert (after.engine.settings.gateway_strategy, after.engine.settings.render_nested_objects) == (
            2,
            True,
        )
        assert before.engine.settings.gateway_strategy == 1 and own.engine.settings.gateway_strategy == 1
        after.engine.settings.rerun_limit = 5  # one runtime's change stays its own
        assert cs.process_settings().rerun_limit == 100
    finally:
        for rt in (before, after, own):
            rt.close()


def test_configure_refuses_an_unknown_name_or_a_bad_value_and_changes_nothing(fresh_defaults):
    with pytest.raises(
        SettingsError, match="unknown setting.*gatway_strategy; known: expr_func, gateway_strategy"
    ):
        culm.configure(gatway_strategy=2)
    with pytest.raises(SettingsError, match="gateway_strategy must be"):
        culm.configure(render_nested_objects=True, gateway_strategy=9)
    assert cs.process_settings() == culm.Settings()


def test_culm_variables_give_the_first_defaults(fresh_defaults, monkeypatch):
    monkeypatch.setenv("CULM_GATEWAY_STRATEGY", "FIRST")
    monkeypatch.setenv("CULM_RENDER_NESTED_OBJECTS", "yes")
    monkeypatch.setenv("CULM_RERUN_LIMIT", "7")
    monkeypatch.setenv("CULM_EXPR_FUNC", "culm.data.boolrule:evaluate_gateway_condition")
    got = cs.process_settings()
    from culm.data import boolrule

    assert (got.gateway_strategy, got.render_nested_objects, got.rerun_limit, got.expr_func) == (
        2,
        True,
        7,
        boolrule.evaluate_gateway_condition,
    )


@pytest.mark.parametrize("order", ["function first", "configure first"])
def test_the_module_of_culm_expr_func_may_call_configure_as_it_loads(fresh_defaults, monkeypatch, tmp_path, order):
    """A settings module named by $CULM_EXPR_FUNC that calls culm.configure while it is imported:
    reading the environment waited for itself on the settings lock for ever."""
    import sys
    import threading

    name = f"c16_expr_settings_{order.split()[0]}"
    parts = ["def decide(expr, context, extra_info):\n    return True\n",
             "import culm\nculm.configure(gateway_strategy=2, rerun_limit=3)\n"]
    (tmp_path / f"{name}.py").write_text("".join(parts if order == "function first" else parts[::-1]))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CULM_EXPR_FUNC", f"{name}:decide")
    monkeypatch.setenv("CULM_RERUN_LIMIT", "7")
    got: list = []
    reader = threading.Thread(target=lambda: got.append(cs.process_settings()), daemon=True)
    try:
        reader.start()
        reader.join(20)
        assert not reader.is_alive(), "process_settings() waited for itself"
        settings = got[0]
        assert (settings.gateway_strategy, settings.rerun_limit) == (2, 3)  # configure wins over CULM_*
        assert settings.expr_func is sys.modules[name].decide
    finally:
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("CULM_RERUN_LIMIT", "many", "$CULM_RERUN_LIMIT must be an integer >= 0, got 'many'"),
        (
            "CULM_EXPR_FUNC",
            "nomodule",
            "$CULM_EXPR_FUNC must name a function as module:function, got 'nomodule'",
        ),
        ("CULM_EXPR_FUNC", "culm.data.boolrule:nothing", "cannot import it (AttributeError"),
        ("CULM_EXPR_FUNC", "culm.data.boolrule:MAX_CONDITION_DEPTH", "is not a function"),
    ],
)
def test_a_bad_variable_is_refused_when_a_runtime_starts(fresh_defaults, monkeypatch, var, value, fragment):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        culm.Runtime("memory://")
    assert fragment in str(info.value)


def test_an_embedded_runtime_imports_culm_imports_first(monkeypatch, tmp_path):
    """The contract loads components through ``$CULM_IMPORTS``; an embedded runtime's threads run
    the work, so it imports them as ``culm worker`` does (it did not: the component was missing)."""
    from culm.components import library

    (tmp_path / "c7_env_plugin.py").write_text(
        "from culm.components import Component, Service\n"
        "class S(Service):\n    def execute(self, data, parent_data):\n        return True\n"
        "class C(Component):\n    name = 'env plugin'\n    code = 'c7_env_plugin'\n    bound_service = S\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CULM_IMPORTS", " c7_env_plugin , c7_env_plugin")
    try:
        culm.Runtime("memory://").close()
        assert library.has("c7_env_plugin")
    finally:
        library.unregister("c7_env_plugin")
        import sys

        sys.modules.pop("c7_env_plugin", None)
    # A module it cannot import is said (the process may define its plugins itself), not raised.
    monkeypatch.setenv("CULM_IMPORTS", "c7_no_such_plugin")
    with pytest.warns(
        RuntimeWarning,
        match=r"cannot import 'c7_no_such_plugin' \(named in \$CULM_IMPORTS\): "
        "ModuleNotFoundError",
    ):
        culm.Runtime("memory://").close()


def test_settings_given_to_a_distributed_runtime_say_the_workers_keep_theirs(fresh_defaults, tmp_path):
    """The workers evaluate gateways and render templates: a distributed runtime's own ``settings=``
    reach none of them, which it says instead of letting the gateway strategy differ silently."""
    import warnings

    url, broker = f"sqlite:///{tmp_path}/d.db", "redis://127.0.0.1:1/0"
    with pytest.warns(
        UserWarning,
        match=r"gateway_strategy, render_nested_objects apply to this process only.*"
        r"culm.configure\(...\) in a module of \$CULM_IMPORTS",
    ):
        culm.Runtime(
            url, broker=broker, settings=culm.Settings(gateway_strategy=2, render_nested_objects=True)
        ).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the leases are this process's own: nothing to say
        culm.Runtime(url, broker=broker, settings=culm.Settings(lease_seconds=5)).close()
