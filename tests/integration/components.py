"""Components, lazy variables and end events used by the engine behaviour tests.

Every code starts with ``t_`` so nothing clashes with the built-in examples or user plugins.
Services keep no state between calls except in ``data.outputs`` (each call gets a new
instance); the few module-level registries below are for the tests to observe what happened
(hook calls) or to hold a component until the test lets it go (gates).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from culm.components import Component, Service, StaticIntervalGenerator
from culm.events import ExecutableEndEvent
from culm.variables import LazyVariable

# -- observation and control shared with the tests ------------------------------------------
# Gates and end-event records live in files, so that a test can hold and observe components that
# run in worker processes (distributed backends) as well as in its own threads. The directory is
# chosen once by the test process and inherited by the workers it starts.
SHARED_DIR = Path(os.environ.setdefault("CULM_TEST_SHARED_DIR", tempfile.mkdtemp(prefix="culm-test-shared-")))
HOOK_CALLS: list[tuple[str, str, Any]] = []  # (node_id, hook name, callback_data); embedded only


class FileGate:
    """A one-shot gate visible to every process: ``set()`` creates a file ``wait()`` looks for."""

    def __init__(self, name: str) -> None:
        self.path = SHARED_DIR / f"gate-{name}"

    def set(self) -> None:
        self.path.touch()

    def is_set(self) -> bool:
        return self.path.exists()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = time.monotonic() + (timeout if timeout is not None else 3600)
        while not self.path.exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


def gate(name: str) -> FileGate:
    """The gate a ``t_gate`` component with input ``gate=name`` waits for."""
    return FileGate(name)


def reset_shared() -> None:
    """Forget every gate and end-event record (called before each test)."""
    for path in SHARED_DIR.glob("*"):
        path.unlink(missing_ok=True)


def end_calls() -> list[tuple[bool, str, str]]:
    """(in_subprocess, root_pipeline_id, current_pipeline_id) of every t_record_end execution."""
    path = SHARED_DIR / "end-calls"
    if not path.exists():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]  # type: ignore[misc]


# -- plain execute ---------------------------------------------------------------------------
class EchoService(Service):
    """Copies every input to an output of the same key; ``out`` = ``str(x) + '!'``."""

    def execute(self, data, parent_data):
        for key, value in data.get_inputs().items():
            data.set_outputs(key, value)
        if "x" in data.inputs:
            data.outputs.out = f"{data.inputs.x}!"
        return True


class EchoComponent(Component):
    code = "t_echo"
    name = "echo"
    bound_service = EchoService


class EchoV2Service(Service):
    def execute(self, data, parent_data):
        data.outputs.version = "v2"
        return True


class EchoV2Component(Component):
    code = "t_echo"
    name = "echo v2"
    version = "2.0"
    bound_service = EchoV2Service


class FailService(Service):
    """Fails (returns False) unless input ``ok`` is truthy; writes ``ex_data`` and ``partial``."""

    def execute(self, data, parent_data):
        data.outputs.partial = data.get_one_of_inputs("x", "p")
        if data.get_one_of_inputs("ok"):
            data.outputs.done = True
            return True
        data.outputs.ex_data = "t_fail said no"
        return False


class FailComponent(Component):
    code = "t_fail"
    name = "fail unless ok"
    bound_service = FailService


class RaiseService(Service):
    def execute(self, data, parent_data):
        raise ValueError("boom from t_raise")


class RaiseComponent(Component):
    code = "t_raise"
    name = "raise"
    bound_service = RaiseService


class NoneService(Service):
    """Returns None: counts as success."""

    def execute(self, data, parent_data):
        data.outputs.ran = True


class NoneComponent(Component):
    code = "t_none"
    name = "returns none"
    bound_service = NoneService


class AttrsService(Service):
    """Exposes the runtime attributes and the parent data it was given."""

    def execute(self, data, parent_data):
        data.outputs.update(
            node_id=self.id, version=self.version, root=self.root_pipeline_id, top=self.top_pipeline_id,
            loop=self.loop, inner_loop=self.inner_loop, parent_inputs=dict(parent_data.get_inputs()),
            in_loop=data.get_one_of_inputs("_loop"), in_inner_loop=data.get_one_of_inputs("_inner_loop"),
        )
        return True


class AttrsComponent(Component):
    code = "t_attrs"
    name = "attrs"
    bound_service = AttrsService


class LogService(Service):
    def execute(self, data, parent_data):
        self.logger.info("hello %s", data.get_one_of_inputs("who", "world"))
        self.logger.warning("second line")
        return not data.get_one_of_inputs("fail", False)


class LogComponent(Component):
    code = "t_log"
    name = "log"
    bound_service = LogService


class LogFloodService(Service):
    """Logs ``lines`` lines of ``width`` characters each (a component logging per item of a large batch)."""

    def execute(self, data, parent_data):
        width = data.get_one_of_inputs("width", 0)
        for i in range(data.get_one_of_inputs("lines")):
            self.logger.info("item %d %s", i, "w" * width)
        data.outputs.logged = True
        return True


class LogFloodComponent(Component):
    code = "t_log_flood"
    name = "log flood"
    bound_service = LogFloodService


class HugeFailureService(Service):
    """Fails with a failure text of ``size`` characters: an exception's message, or ``ex_data`` it sets."""

    def execute(self, data, parent_data):
        size = data.get_one_of_inputs("size")
        data.outputs.partial = "kept"
        if data.get_one_of_inputs("how") == "ex_data":
            data.outputs.ex_data = "head " + "y" * size + " tail"
            return False
        raise ValueError("head " + "x" * size + " tail")


class HugeFailureComponent(Component):
    code = "t_huge_failure"
    name = "huge failure text"
    bound_service = HugeFailureService


class LoopOutputService(Service):
    """Outputs ``outputs``: a dict holding ``size`` characters, which a node loop collects."""

    def execute(self, data, parent_data):
        data.outputs.outputs = {"k": "o" * data.get_one_of_inputs("size")}
        return True


class LoopOutputComponent(Component):
    code = "t_loop_output"
    name = "loop output"
    bound_service = LoopOutputService


class GateService(Service):
    """Waits (bounded) until the test sets ``gate(inputs.gate)``, then succeeds with ``late``."""

    def execute(self, data, parent_data):
        released = gate(data.inputs.gate).wait(timeout=15)
        data.outputs.late = "result after release"
        return released


class GateComponent(Component):
    code = "t_gate"
    name = "gate"
    bound_service = GateService


# -- schedules --------------------------------------------------------------------------------
class PollService(Service):
    """Polls ``polls`` times (default 2), then finishes; ``fail_at`` makes that poll fail."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0)

    def execute(self, data, parent_data):
        data.outputs.count = 0
        return True

    def schedule(self, data, parent_data, callback_data=None):
        data.outputs.count += 1
        if data.outputs.count == data.get_one_of_inputs("fail_at"):
            data.outputs.ex_data = "poll failed"
            return False
        if data.outputs.count >= data.get_one_of_inputs("polls", 2):
            self.finish_schedule()
        return True


class PollComponent(Component):
    code = "t_poll"
    name = "poll"
    bound_service = PollService


class LoggingPollService(PollService):
    """PollService logging a line of ``width`` characters at each poll."""

    def schedule(self, data, parent_data, callback_data=None):
        self.logger.info("poll %d %s", data.outputs.count + 1, "w" * data.get_one_of_inputs("width", 0))
        return super().schedule(data, parent_data, callback_data)


class LoggingPollComponent(Component):
    code = "t_poll_log"
    name = "logging poll"
    bound_service = LoggingPollService


class PollGateService(PollService):
    """A poll that holds its first ``schedule`` call until ``gate(inputs.gate)`` is set; then it
    finishes, or fails if ``inputs.fail``."""

    def schedule(self, data, parent_data, callback_data=None):
        gate(data.inputs.gate).wait(timeout=15)
        data.outputs.late = True
        if data.get_one_of_inputs("fail", False):
            data.outputs.ex_data = "poll failed after the gate"
            return False
        self.finish_schedule()
        return True


class PollGateComponent(Component):
    code = "t_poll_gate"
    name = "poll gate"
    bound_service = PollGateService


class GatePollService(PollService):
    """An ``execute`` held until ``gate(inputs.gate)`` is set, then polls (``polls`` times, default 2)."""

    def execute(self, data, parent_data):
        gate(data.inputs.gate).wait(timeout=15)
        data.outputs.count = 0
        return True


class GatePollComponent(Component):
    code = "t_gate_poll"
    name = "gate then poll"
    bound_service = GatePollService


class PollRaiseService(PollService):
    def schedule(self, data, parent_data, callback_data=None):
        raise RuntimeError("schedule exploded")


class PollRaiseComponent(Component):
    code = "t_poll_raise"
    name = "poll raise"
    bound_service = PollRaiseService


class CallbackService(Service):
    """Waits for one callback; fails when the payload says ``{"ok": False}``."""

    __need_schedule__ = True
    interval = None

    def execute(self, data, parent_data):
        data.outputs.waiting = True
        return True

    def schedule(self, data, parent_data, callback_data=None):
        data.outputs.callback_data = callback_data
        return (callback_data or {}).get("ok", True)


class CallbackComponent(Component):
    code = "t_callback"
    name = "callback"
    bound_service = CallbackService


class GateCallbackService(CallbackService):
    """An ``execute`` held until ``gate(inputs.gate)`` is set, then waits for one callback."""

    def execute(self, data, parent_data):
        gate(data.inputs.gate).wait(timeout=15)
        data.outputs.executed = True
        return True


class GateCallbackComponent(Component):
    code = "t_gate_callback"
    name = "gate then callback"
    bound_service = GateCallbackService


class SlowPollService(Service):
    """Polls once an hour and never finishes on its own (a node that waits for its next poll)."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(3600)

    def execute(self, data, parent_data):
        return True

    def schedule(self, data, parent_data, callback_data=None):
        return True


class GatedPollsService(Service):
    """Each step held by its own gate: ``execute`` until ``gate(f"{inputs.gate}-execute")``, poll n
    (1, 2) until ``gate(f"{inputs.gate}-poll{n}")``; finishes after the second poll."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0)

    def execute(self, data, parent_data):
        gate(f"{data.inputs.gate}-execute").wait(timeout=15)
        data.outputs.count = 0
        return True

    def schedule(self, data, parent_data, callback_data=None):
        data.outputs.count += 1
        gate(f"{data.inputs.gate}-poll{data.outputs.count}").wait(timeout=15)
        if data.outputs.count >= 2:
            self.finish_schedule()
        return True


class GatedPollsComponent(Component):
    code = "t_gated_polls"
    name = "gated polls"
    bound_service = GatedPollsService


class SlowPollComponent(Component):
    code = "t_slow_poll"
    name = "slow poll"
    bound_service = SlowPollService


class MultiCallbackService(Service):
    """Collects every callback's ``n``; finishes when a payload has ``done``, fails when it has
    ``fail`` (or ``"ok": False``). A payload with ``gate`` holds its call until that gate opens;
    every call is counted ("multi_call" in calls())."""

    __need_schedule__ = True
    __multi_callback_enabled__ = True
    interval = None

    def execute(self, data, parent_data):
        data.outputs.received = []
        return True

    def schedule(self, data, parent_data, callback_data=None):
        count_call("multi_call", self.id)
        if callback_data.get("gate"):
            gate(callback_data["gate"]).wait(60)
        data.outputs.received = [*data.outputs.received, callback_data["n"]]
        if callback_data.get("fail") or callback_data.get("ok") is False:
            return False
        if callback_data.get("done"):
            self.finish_schedule()
        return True


class MultiCallbackComponent(Component):
    code = "t_multi_callback"
    name = "multi callback"
    bound_service = MultiCallbackService


# -- hooks ------------------------------------------------------------------------------------
HOOK_NAMES = (
    "node_enter", "pre_execute", "post_execute", "node_execute_fail", "node_execute_exception",
    "pre_schedule", "post_schedule", "node_schedule_fail", "node_schedule_exception", "node_finish",
    "pre_pause_node", "post_pause_node", "pre_retry_node", "post_retry_node", "pre_skip_node",
    "post_skip_node", "pre_forced_fail_activity", "post_forced_fail_activity", "pre_callback",
    "post_callback", "pre_resume_node", "post_resume_node",
)


def _recorder(name):
    def hook(self, data, parent_data, callback_data=None):
        HOOK_CALLS.append((self.id, name, callback_data))
        if data.get_one_of_inputs("hook_raises") == "exit":
            raise SystemExit(f"hook {name} exited")
        raises = data.get_one_of_inputs("hook_raises")
        if raises:  # a text: the exception's message ends with it (a forged log line, say)
            raise RuntimeError(f"hook {name} raised" + (f": {raises}" if isinstance(raises, str) else ""))
        return True

    hook.__name__ = name
    return hook


class HookService(Service):
    """Records every hook call; input ``mode``: ok (default), fail or raise."""

    __need_run_hook__ = True

    def execute(self, data, parent_data):
        mode = data.get_one_of_inputs("mode", "ok")
        if mode == "raise":
            raise RuntimeError("hook service raised")
        return mode != "fail"


class HookCallbackService(HookService):
    """Like HookService, then waits for one callback (fails on ``{"ok": False}``)."""

    __need_schedule__ = True
    interval = None

    def execute(self, data, parent_data):
        data.outputs.waiting = True
        return super().execute(data, parent_data)

    def schedule(self, data, parent_data, callback_data=None):
        return (callback_data or {}).get("ok", True)


for _name in HOOK_NAMES:
    setattr(HookService, _name, _recorder(_name))


class HookComponent(Component):
    code = "t_hook"
    name = "hook"
    bound_service = HookService


class HookCallbackComponent(Component):
    code = "t_hook_callback"
    name = "hook callback"
    bound_service = HookCallbackService


# -- lazy variables and end events ------------------------------------------------------------
class UpperVariable(LazyVariable):
    code = "t_upper"

    def get_value(self):
        return str(self.value).upper()


class PipelineDataVariable(LazyVariable):
    """``{value, data: pipeline_data, inner_loop}``."""

    code = "t_pdata"

    def get_value(self):
        return {"value": self.value, "data": dict(self.pipeline_data), "inner_loop": self.inner_loop}


class RaiseVariable(LazyVariable):
    code = "t_lazy_raise"

    def get_value(self):
        if self.value == "bare":
            raise RecursionError  # no message: ex_data must still say what was raised
        raise RuntimeError("lazy exploded")


class SlowVariable(LazyVariable):
    """Blocks for ``value`` seconds (as a lookup in a slow service would), then returns "slow"."""

    code = "t_lazy_slow"

    def get_value(self):
        time.sleep(float(self.value))
        return "slow"


class GateVariable(LazyVariable):
    """Waits (bounded) for the gate named by its value, then resolves to "opened": a test acts
    while the value renders on the user-code pool."""

    code = "t_lazy_gate"

    def get_value(self):
        gate(str(self.value)).wait(30)
        return "opened"


class CountingVariable(LazyVariable):
    """A different value each time it is resolved (to show pre_render_keys freezing)."""

    code = "t_counting"
    calls = 0

    def get_value(self):
        type(self).calls += 1
        return type(self).calls


class RecordEnd(ExecutableEndEvent):
    code = "t_record_end"

    def execute(self, in_subprocess, root_pipeline_id, current_pipeline_id):
        with open(SHARED_DIR / "end-calls", "a") as fh:
            fh.write(json.dumps([in_subprocess, root_pipeline_id, current_pipeline_id]) + "\n")


class GateEnd(ExecutableEndEvent):
    """Records its call as t_record_end does, then waits (bounded) for the gate named "end"."""

    code = "t_gate_end"

    def execute(self, in_subprocess, root_pipeline_id, current_pipeline_id):
        with open(SHARED_DIR / "end-calls", "a") as fh:
            fh.write(json.dumps([in_subprocess, root_pipeline_id, current_pipeline_id]) + "\n")
        gate("end").wait(30)


class RaiseEnd(ExecutableEndEvent):
    code = "t_raise_end"

    def execute(self, in_subprocess, root_pipeline_id, current_pipeline_id):
        raise RuntimeError("end event exploded")


# -- results the store cannot hold (test_fail_paths.py) ----------------------------------------
def count_call(kind: str, node_id: str) -> None:
    """Record one call of ``kind`` on ``node_id`` in a file every process sees (see calls())."""
    with open(SHARED_DIR / "calls", "a") as fh:
        fh.write(f"{kind} {node_id}\n")


def calls(kind: str, node_id: str) -> int:
    """How many calls of ``kind`` on ``node_id`` count_call recorded since the test began."""
    path = SHARED_DIR / "calls"
    if not path.exists():
        return 0
    return path.read_text().splitlines().count(f"{kind} {node_id}")


def unstorable(kind: str) -> Any:
    """A value (or log line) the store cannot hold, by ``kind``."""
    import threading

    if kind == "lock":
        return threading.Lock()
    if kind == "deep":
        value: Any = []
        for _ in range(5000):
            value = [value]
        return value
    if kind == "shared":  # 2**40 values written out: a walk over it froze the engine
        value = []
        for _ in range(40):
            value = [value, value]
        return value
    if kind == "large":  # over culm.model.limits.MAX_PAYLOAD_BYTES: MariaDB would drop the connection
        return "x" * 7_000_001
    if kind == "surrogate":
        return "bad \udcff line"
    if kind == "nul":
        return "bad \x00 line"
    raise ValueError(kind)


class UnstorableService(Service):
    """Returns a good output ``fine`` and, by ``inputs.kind``, an output ``bad`` (lock, deep, shared, large) or a
    log line (surrogate, nul) the store cannot hold. ``inputs.on`` = "schedule" does it in the
    first poll instead of execute."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0)

    def _produce(self, data: Any) -> None:
        kind = data.get_one_of_inputs("kind")
        data.set_outputs("fine", 1)
        if kind in ("surrogate", "nul"):
            self.logger.info("a good line")
            self.logger.info(unstorable(kind))
        else:
            data.set_outputs("bad", unstorable(kind))

    def execute(self, data, parent_data):
        count_call("execute", self.id)
        if data.get_one_of_inputs("on") != "schedule":
            self._produce(data)
        return True

    def schedule(self, data, parent_data, callback_data=None):
        count_call("schedule", self.id)
        if data.get_one_of_inputs("on") == "schedule":
            self._produce(data)
        self.finish_schedule()
        return True


class UnstorableComponent(Component):
    code = "t_unstorable"
    name = "unstorable result"
    bound_service = UnstorableService


class LockVariable(LazyVariable):
    """Resolves to a lock: a value the store cannot hold (frozen by pre_render_keys, the engine
    has to store it while it walks, outside any component)."""

    code = "t_lock_var"

    def get_value(self):
        import threading

        return threading.Lock()


class CountedCallbackService(CallbackService):
    """A t_callback whose ``schedule`` calls are counted (count_call "callback")."""

    def schedule(self, data, parent_data, callback_data=None):
        count_call("callback", self.id)
        return super().schedule(data, parent_data, callback_data)


class CountedCallbackComponent(Component):
    code = "t_callback_counted"
    name = "counted callback"
    bound_service = CountedCallbackService


# -- stored values (test_stored_values.py) -------------------------------------------------------
def stored_values() -> dict[str, Any]:
    """Values a component returns as output ``value`` (t_value, by ``inputs.name``)."""
    import datetime
    import decimal

    return {
        "tuple": (1, 2),
        "nested tuple": {"a": (1, (2, 3))},
        "int keys": {1: "a", 2: "b"},
        "float, bool and None keys": {1.5: "x", True: 1, None: 2},
        "int and str keys that collide": {1: "a", "1": "b"},
        "bool and str keys that collide": {True: 1, "true": 2},
        "collision deep inside": [{"x": {1: "a", "1": "b"}}],
        "tuple key": {(1, 2): "a"},
        "set": {1, 2},
        "datetime": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "decimal": decimal.Decimal("1.10"),
        "big int": 2**80,
        "text with NUL": "a\x00b",
        "text with a lone surrogate": "a\udcffb",
        "unicode": "h\u00e9llo \u4e2d",
        "envelope lookalike": {"__culm_pickle__": "x"},
        "none": None,
    }


class ValueService(Service):
    def execute(self, data, parent_data):
        data.set_outputs("value", stored_values()[data.get_one_of_inputs("name")])
        return True


class ValueComponent(Component):
    code = "t_value"
    name = "value"
    bound_service = ValueService


class GatedCallbackService(CountedCallbackService):
    """A counted t_callback whose ``execute`` first waits (bounded) for ``gate(inputs.gate)``."""

    def execute(self, data, parent_data):
        gate(data.inputs.gate).wait(timeout=15)
        return super().execute(data, parent_data)


class GatedCallbackComponent(Component):
    code = "t_callback_gated"
    name = "gated callback"
    bound_service = GatedCallbackService


class AwkwardService(Service):
    """Outputs what JSON cannot write as it is: an int too long to write as text, a NaN, a tuple
    key, a list that holds itself (``culm status --outputs`` shows them)."""

    def execute(self, data, parent_data):
        itself: list = ["a"]
        itself.append(itself)
        data.outputs.update(long=10**5000, nan=float("nan"), pair={(1, 2): "p"}, itself=itself)
        return True


class AwkwardComponent(Component):
    code = "t_awkward"
    name = "awkward outputs"
    bound_service = AwkwardService


# -- objects that reach outside, put into the context (templates must not use what they can do) --
def client_calls() -> list[str]:
    """What every :class:`ReachingClient` was made to do, in any process (one line each)."""
    path = SHARED_DIR / "client-calls"
    return path.read_text().splitlines() if path.exists() else []


class ReachingClient:
    """Stands for a ``requests.Session``, a database connection: its methods, its property and its
    iteration would reach the network; here each records itself in a shared file."""

    kind = "http"

    def __init__(self, url: str) -> None:
        self.url = url

    def _record(self, what: str) -> None:
        with (SHARED_DIR / "client-calls").open("a") as calls:
            calls.write(what + "\n")

    def get(self, path: str) -> str:
        self._record(f"get {path}")
        return f"fetched {path}"

    @property
    def token(self) -> str:
        self._record("token")
        return "s3cret"

    def __iter__(self):
        self._record("iter")
        return iter(["row"])

    def __getitem__(self, key: str) -> str:
        self._record(f"getitem {key}")
        return "row"

    # what splicing, comparing, hashing and adding it run (a session's __str__ that logs in)
    def __str__(self) -> str:
        self._record("str")
        return "client"

    def __eq__(self, other: object) -> bool:
        self._record("eq")
        return other == "client"

    def __hash__(self) -> int:
        self._record("hash")
        return 1

    def __add__(self, other: object) -> str:
        self._record("add")
        return "client"


class ClientService(Service):
    """Outputs ``client``: a :class:`ReachingClient` for the ``url`` input (stored pickled)."""

    def execute(self, data, parent_data):
        data.outputs.client = ReachingClient(data.get_one_of_inputs("url") or "http://svc")
        return True


class ClientComponent(Component):
    code = "t_client"
    name = "client"
    bound_service = ClientService


class OpenFileVariable(LazyVariable):
    """An open file, for the path its value names: a lazy variable's value is never stored, so
    a template meets the file object itself."""

    code = "t_lazy_file"

    def get_value(self):
        return open(self.value)  # noqa: SIM115 - the object a careless lazy variable hands out
