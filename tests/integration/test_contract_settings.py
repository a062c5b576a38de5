"""bamboo's engine settings reach the processes that run the work: a module named in
``$CULM_IMPORTS`` calls ``culm.configure`` (as a bamboo project sets ``PIPELINE_EXCLUSIVE_GATEWAY_STRATEGY``,
``PIPELINE_EXCLUSIVE_GATEWAY_EXPR_FUNC`` and ``ENABLE_RENDER_OBJ_BY_MAKO_STRING`` in its Django
settings), and ``culm worker`` processes (PostgreSQL + Redis, MariaDB + RabbitMQ, started as the
acceptance harness starts them) and an embedded runtime (SQLite, in a process of its own whose
``$CULM_IMPORTS`` names the module) evaluate gateways and render templates with them. The
``CULM_*`` variables do the same without a module; a bad value is one clear error.

Before, the workers kept culm's defaults whatever the user's module set (only ``culm.Settings``
given to an embedded runtime counted), and an embedded runtime did not import ``$CULM_IMPORTS``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from backends import HERE, REPO
from contract_support import harness_backends, start_run, state_of, wait_for

import culm
from culm import api

pytestmark = pytest.mark.timeout(300)

IMPORTS = "contract_components,contract_settings"
PROCESS_ENV = {"PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)])}


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    """``configured(name)``: the harness-style backend ``name`` whose workers import ``contract_settings``
    (one worker, torn down at the module's end)."""
    yield from harness_backends(tmp_path_factory, IMPORTS, workers=1)


def settings_tree() -> tuple[dict[str, Any], dict[str, str]]:
    """An exclusive gateway whose two conditions both hold for ``only_yes`` (FIRST takes ``a``; with
    ONLY the gateway would fail; boolrule could not evaluate ``yes 1``), a second one whose first
    condition is the sole fragment ``${d['k'][1]}`` (``only_yes`` holds for its object, as bamboo
    renders a condition like an input; its text would leave the first condition false and take
    ``y``), then ``c`` whose input is the splice variable ``${s}`` = ``${d['k'][1]}``, also the
    pipeline's output."""
    from culm import builder as b

    start = b.EmptyStartEvent()
    gw = b.ExclusiveGateway(conditions={0: "yes ${d['k'][0]}", 1: "yes too"}, extra_info={"who": "me"})
    gw2 = b.ExclusiveGateway(conditions={0: "${d['k'][1]}", 1: "yes too"}, extra_info={"who": "me"})
    first, second, x, y, c = (b.ServiceActivity(component_code="cs_echo") for _ in range(5))
    c.component.inputs.value = b.Var(type=b.Var.SPLICE, value="${s}")
    start.extend(gw).connect(first, second).to(gw).converge(b.ConvergeGateway()).extend(gw2).connect(x, y).to(
        gw2
    ).converge(b.ConvergeGateway()).extend(c).extend(b.EmptyEndEvent())
    d = b.Var(type=b.Var.PLAIN, value={"k": [1, {"z": 2}]})
    s = b.Var(type=b.Var.SPLICE, value="${d['k'][1]}")
    tree = b.build_tree(start, data=b.Data(inputs={"${d}": d, "${s}": s}, outputs=["${s}"]))
    return tree, {"a": first.id, "b": second.id, "c": c.id, "gw": gw.id, "gw2": gw2.id, "x": x.id, "y": y.id}


def assert_configured_run(rt: Any, tree: dict[str, Any], ids: dict[str, str]) -> None:
    pid = tree["id"]
    wait_for(rt, pid, "FINISHED", "RUNNING")
    wait_for(rt, ids["c"], "FINISHED", "FAILED")
    assert state_of(rt, ids["gw"]) == "FINISHED", api.get_execution_data_outputs(rt, ids["gw"]).data
    assert (state_of(rt, ids["a"]), state_of(rt, ids["b"])) == ("FINISHED", None)  # FIRST, through only_yes
    assert state_of(rt, ids["gw2"]) == "FINISHED", api.get_execution_data_outputs(rt, ids["gw2"]).data
    assert (state_of(rt, ids["x"]), state_of(rt, ids["y"])) == ("FINISHED", None)  # the object reached only_yes
    assert api.get_execution_data_inputs(rt, ids["c"]).data["value"] == {"z": 2}  # the object, not its text
    assert api.get_execution_data_outputs(rt, ids["c"]).data["value"] == {"z": 2}
    wait_for(rt, pid, "FINISHED")
    assert api.get_execution_data_outputs(rt, pid).data == {"${s}": {"z": 2}}


@pytest.mark.parametrize("name", ["postgres-redis", "mariadb-rabbitmq"])
def test_a_module_of_culm_imports_configures_the_workers(configured, name):
    backend = configured(name)
    rt = backend.runtime()
    tree, ids = settings_tree()
    start_run(rt, tree)
    assert_configured_run(rt, tree, ids)


EMBEDDED = """
import sys, time, culm
from culm import api
tree = __import__("json").load(open(sys.argv[2]))
with culm.Runtime(sys.argv[1]) as rt:
    assert api.run_pipeline(rt, tree).result
    end = time.monotonic() + 120
    while api.get_children_states(rt, tree["id"]).data[tree["id"]]["state"] != "FINISHED":
        states = api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["children"].values()
        if any(s["state"] == "FAILED" for s in states) or time.monotonic() > end:
            break
        time.sleep(0.05)
"""


def run_embedded(tmp_path: Path, tree: dict[str, Any], env: dict[str, str]) -> str:
    """Run ``tree`` on an embedded runtime in a process of its own with ``env``; its database URL."""
    url = f"sqlite:///{tmp_path}/embedded.db"
    (tmp_path / "tree.json").write_text(json.dumps(tree))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CULM_") or k.startswith("CULM_TEST_")}
    out = subprocess.run(
        [sys.executable, "-c", EMBEDDED, url, str(tmp_path / "tree.json")],
        env={**clean, **PROCESS_ENV, **env},
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert out.returncode == 0, out.stderr
    return url


def test_an_embedded_runtime_imports_culm_imports_and_takes_its_settings(tmp_path):
    """The SQLite variant: the components and the settings come from ``$CULM_IMPORTS`` alone."""
    tree, ids = settings_tree()
    url = run_embedded(tmp_path, tree, {"CULM_IMPORTS": IMPORTS})
    with culm.Runtime(url, workers=0) as rt:
        assert_configured_run(rt, tree, ids)


def test_culm_variables_set_the_defaults_without_a_module(tmp_path):
    """``CULM_GATEWAY_STRATEGY=first``, ``CULM_EXPR_FUNC=module:function``, ``CULM_RENDER_NESTED_OBJECTS=1``
    (the module named by ``$CULM_EXPR_FUNC`` is imported for the function; the components come from
    a module that configures nothing)."""
    tree, ids = settings_tree()
    url = run_embedded(
        tmp_path,
        tree,
        {
            "CULM_IMPORTS": "contract_settings_free",
            "CULM_GATEWAY_STRATEGY": "first",
            "CULM_EXPR_FUNC": "contract_settings_free:only_yes",
            "CULM_RENDER_NESTED_OBJECTS": "1",
        },
    )
    with culm.Runtime(url, workers=0) as rt:
        assert_configured_run(rt, tree, ids)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        (
            {"CULM_GATEWAY_STRATEGY": "firs"},
            "$CULM_GATEWAY_STRATEGY must be 'only' (1) or 'first' (2), got 'firs'",
        ),
        ({"CULM_RENDER_NESTED_OBJECTS": "maybe"}, "$CULM_RENDER_NESTED_OBJECTS must be"),
        (
            {"CULM_EXPR_FUNC": "contract_settings_free:nothing"},
            "$CULM_EXPR_FUNC='contract_settings_free:nothing': cannot import it",
        ),
        ({"CULM_IMPORTS": "no_such_plugins"}, "cannot import module 'no_such_plugins'"),
    ],
)
@pytest.mark.parametrize("command", ["run", "worker"])
def test_a_bad_setting_stops_the_command_with_one_line(tmp_path, env, fragment, command):
    """``culm run`` (embedded) and ``culm worker`` refuse a bad ``CULM_*`` value before they start,
    with exit 2 and one line naming the variable and the value."""
    args = {
        "run": ["run", str(REPO / "examples" / "tree.json")],
        "worker": ["worker", "--broker", "redis://127.0.0.1:1/0"],
    }[command]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CULM_") or k.startswith("CULM_TEST_")}
    out = subprocess.run(
        [sys.executable, "-m", "culm", *args, "--db", f"sqlite:///{tmp_path}/x.db"],
        cwd=tmp_path,
        env={**clean, **PROCESS_ENV, **env},
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert fragment in out.stderr, out.stderr


def test_preview_node_inputs_renders_as_the_runtimes_settings_say():
    """``preview_node_inputs`` and a splice variable it needs follow ``render_nested_objects`` (they
    gave the text of the object whatever the setting)."""
    tree, ids = settings_tree()
    for nested, expected in ((True, {"z": 2}), (False, "{'z': 2}")):
        with culm.Runtime("memory://", settings=culm.Settings(render_nested_objects=nested)) as rt:
            res = api.preview_node_inputs(rt, tree, ids["c"])
            assert res.result, res.message
            assert res.data == {"value": expected}
