"""Gateways and a subprocess: a parallel block, an exclusive choice and a nested pipeline.

    start -> parallel -> greet ---------\\
                      -> count ----------> converge -> choose -> big:   subprocess ---\\
                                                              -> small: example_component -> converge -> end

``greet`` and ``count`` (the built-in ``pipe_example_component``, which copies its inputs to its
outputs) run concurrently; their outputs become context variables through ``NodeOutput``. The
exclusive gateway ``choose`` takes the branch whose condition holds, and the subprocess receives
``${greeting}`` as a parameter. Run it as ``python examples/parallel_exclusive_subprocess.py`` or
``culm run examples/parallel_exclusive_subprocess.py``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import culm
from culm import api
from culm.builder import (
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    NodeOutput,
    ParallelGateway,
    Params,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)


def build_subprocess() -> SubProcess:
    """A nested pipeline that echoes the ``${message}`` its parent passes in."""
    start = EmptyStartEvent()
    echo = ServiceActivity(component_code="pipe_example_component", name="echo in subprocess")
    echo.component.inputs.message = Var(type=Var.SPLICE, value="subprocess got: ${message}")
    start.extend(echo).extend(EmptyEndEvent())
    data = Data()
    data.inputs["${message}"] = Var(type=Var.PLAIN, value="(no message)")
    params = Params({"${message}": Var(type=Var.SPLICE, value="${greeting}")})
    return SubProcess(start=start, data=data, params=params, name="big branch subprocess")


def build_pipeline() -> dict:
    """The tree drawn in the module docstring; ids are fresh on every call."""
    start = EmptyStartEvent(name="start")
    fork = ParallelGateway(name="fork")
    greet = ServiceActivity(component_code="pipe_example_component", name="greet")
    greet.component.inputs.greeting = Var(type=Var.SPLICE, value="hello, ${who}")
    count = ServiceActivity(component_code="pipe_example_component", name="count")
    count.component.inputs.total = Var(type=Var.PLAIN, value=7)
    join = ConvergeGateway(name="join")
    choose = ExclusiveGateway(conditions={0: "${total} > 5", 1: "${total} <= 5"}, name="choose")
    big = build_subprocess()
    small = ServiceActivity(component_code="example_component", name="small branch")
    merge = ConvergeGateway(name="merge")
    end = EmptyEndEvent(name="end")

    start.extend(fork).connect(greet, count).to(fork).converge(join).extend(choose)
    choose.connect(big, small).to(choose).converge(merge).extend(end)

    data = Data()
    data.inputs["${who}"] = Var(type=Var.PLAIN, value="culm")
    data.inputs["${greeting}"] = NodeOutput(source_act=greet.id, source_key="greeting")
    data.inputs["${total}"] = NodeOutput(source_act=count.id, source_key="total")
    return build_tree(start, data=data)


def find(tree: dict, name: str) -> str:
    """Id of the activity called ``name``, looking into subprocesses too."""
    for act in tree["activities"].values():
        if act.get("name") == name:
            return act["id"]
        if act.get("pipeline"):
            try:
                return find(act["pipeline"], name)
            except LookupError:
                pass
    raise LookupError(name)


def wait_for_end(runtime: culm.Runtime, root_id: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        states = api.get_pipeline_states(runtime, root_id).data
        state = states[root_id]["state"] if states else "UNKNOWN"
        if state in ("FINISHED", "REVOKED"):
            break
        time.sleep(0.05)
    return state


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, culm.Runtime(f"sqlite:///{Path(tmp) / 'gateways.db'}") as runtime:
        pipeline = build_pipeline()
        result = api.run_pipeline(runtime, pipeline)
        assert result.result, result.message
        state = wait_for_end(runtime, pipeline["id"])
        echo = api.get_execution_data_outputs(runtime, find(pipeline, "echo in subprocess")).data
        small = api.get_pipeline_states(runtime, pipeline["id"]).data[pipeline["id"]]["children"].get(
            find(pipeline, "small branch"))
        print(f"subprocess echo: {echo.get('message')!r}")
        print(f"small branch reached: {small is not None}")
        print(f"pipeline {pipeline['id']} {state}")
        return 0 if state == "FINISHED" and echo.get("message") == "subprocess got: hello, culm" else 1


if __name__ == "__main__":
    raise SystemExit(main())
