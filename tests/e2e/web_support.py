"""A real ``culm serve`` for tests: uvicorn on a free port in a thread, an embedded runtime, tokens;
and the console tests' ways to read and click the page while it redraws itself on live changes.

Test modules import the fixtures they use from here (``from web_support import served``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
import web_components  # noqa: F401 - registers the web_* components
from support import free_port, wait_until

import culm
from culm.builder import (
    ConditionalParallelGateway,
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ParallelGateway,
    Params,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.web.app import create_app

T = TypeVar("T")


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 in a daemon thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_until(lambda: self.server.started, 20, 0.05, what="uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Served:
    """A running service: its URL, runtime and one token per role (plus one revoked)."""

    url: str
    runtime: Any
    app: Any
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, role: str | None = "admin", **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, **{"timeout": 30, **kw})

    def state(self, node_id: str) -> str | None:
        found = culm.api.get_children_states(self.runtime, node_id).data or {}
        return found[node_id]["state"] if node_id in found else None

    def wait_state(self, node_id: str, state: str, timeout: float = 30) -> None:
        wait_until(lambda: self.state(node_id) == state, timeout, 0.05, what=f"{node_id} to be {state}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder: Path = tmp_path_factory.mktemp("web")
    runtime = culm.Runtime(f"sqlite:///{folder / 'web.db'}")
    app = create_app(runtime, max_body=64 * 1024)
    with ServerThread(app) as server:
        result = Served(server.url, runtime, app)
        for role in ("viewer", "operator", "admin"):
            result.tokens[role], _ = app.state.tokens.create(role, f"test {role}")
        text, info = app.state.tokens.create("admin", "revoked")
        app.state.tokens.revoke(info.id)
        result.tokens["revoked"] = text
        yield result
    runtime.close()


def divide_tree(divisor: int, name: str = "divide", wait: bool = False) -> dict:
    """start → divide(100 / divisor) → [wait for a callback] → end, under fresh ids."""
    start = EmptyStartEvent(name="start")
    act = ServiceActivity(component_code="web_divide", name="divide")
    act.component.inputs.divisor = Var(type=Var.PLAIN, value=divisor)
    chain = start.extend(act)
    if wait:
        chain = chain.extend(ServiceActivity(component_code="web_wait", name="approve"))
    chain.extend(EmptyEndEvent(name="end"))
    tree = build_tree(start, id=f"p{uuid.uuid4().hex}")
    tree["name"] = name
    return tree


def showcase_tree(name: str = "showcase") -> dict:
    """A fork into two branches (one waiting for a callback, one through a subprocess), then a join."""
    inner_start = EmptyStartEvent(name="sub start")
    inner_start.extend(ServiceActivity(component_code="web_divide", name="inner divide")).extend(
        EmptyEndEvent(name="sub end"))
    for act in _activities(inner_start):
        act.component.inputs.divisor = Var(type=Var.PLAIN, value=5)
    start = EmptyStartEvent(name="start")
    fork, join = ParallelGateway(), ConvergeGateway()
    first = ServiceActivity(component_code="web_divide", name="divide")
    first.component.inputs.divisor = Var(type=Var.PLAIN, value=2)
    wait = ServiceActivity(component_code="web_wait", name="approve")
    sub = SubProcess(start=inner_start, name="subprocess")
    start.extend(first).extend(fork).connect(wait, sub).converge(join).extend(EmptyEndEvent(name="end"))
    tree = build_tree(start, id=f"p{uuid.uuid4().hex}")
    tree["name"] = name
    return tree


def _activities(start: Any) -> list[Any]:
    found, todo = [], [start]
    while todo:
        node = todo.pop()
        if isinstance(node, ServiceActivity):
            found.append(node)
        todo.extend(node.outgoing)
    return found


def chain_tree(size: int, name: str = "big", gate: bool = False) -> dict:
    """A pipeline of ``size`` nodes: ten parallel branches of activities, forked and joined; with
    ``gate``, a ``web_wait`` activity first holds everything until it gets a callback."""
    start = EmptyStartEvent(name="start")
    fork, join = ParallelGateway(), ConvergeGateway()
    if gate:
        start.extend(ServiceActivity(component_code="web_wait", name="gate")).extend(fork)
    else:
        start.extend(fork)
    branches = []
    per_branch = max(1, -(-(size - 4) // 10))
    for b in range(10):
        head = ServiceActivity(component_code="web_divide", name=f"b{b} step 0")
        head.component.inputs.divisor = Var(type=Var.PLAIN, value=1)
        node = head
        for i in range(1, per_branch):
            nxt = ServiceActivity(component_code="web_divide", name=f"b{b} step {i}")
            nxt.component.inputs.divisor = Var(type=Var.PLAIN, value=1)
            node = node.extend(nxt)
        branches.append((head, node))
    fork.connect(*[h for h, _ in branches])
    for _, tail in branches:
        tail.extend(join)
    join.extend(EmptyEndEvent(name="end"))
    tree = build_tree(start, id=f"p{uuid.uuid4().hex}")
    tree["name"] = name
    return tree


def failing_gateways_tree() -> dict:
    """An exclusive gateway, a conditional parallel gateway and a subprocess that all fail on entry.

    ``${v}`` is 1, so no condition holds; the subprocess's param is a lazy variable that raises.
    """
    start, fork, join = EmptyStartEvent(name="start"), ParallelGateway(), ConvergeGateway()
    exg = ExclusiveGateway(conditions={0: "${v} > 100", 1: "${v} > 200"}, name="exclusive")
    cpg = ConditionalParallelGateway(conditions={0: "${v} > 100", 1: "${v} > 200"}, name="conditional")
    cpg_join = ConvergeGateway()
    exg_join = ConvergeGateway()
    sub_start = EmptyStartEvent()
    inner = ServiceActivity(component_code="web_divide", name="inner")
    inner.component.inputs.divisor = Var(type=Var.PLAIN, value=1)
    sub_start.extend(inner).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start, data=Data(inputs={"${p}": Var(type=Var.PLAIN, value=1)}),
                     params=Params({"${p}": Var(type=Var.SPLICE, value="${boom}")}), name="subprocess")
    branches = []
    for gateway, gateway_join in ((exg, exg_join), (cpg, cpg_join)):
        left, right = _divide("left"), _divide("right")
        gateway.connect(left, right).to(gateway).converge(gateway_join)
        branches.append((gateway, gateway_join))
    start.extend(fork).connect(exg, cpg, sub)
    exg_join.extend(join)
    cpg_join.extend(join)
    sub.extend(join)
    join.extend(EmptyEndEvent(name="end"))
    tree = build_tree(start, id=f"p{uuid.uuid4().hex}", data=Data(inputs={
        "${v}": Var(type=Var.PLAIN, value=1),
        "${boom}": Var(type=Var.LAZY, custom_type="web_lazy_explodes", value="x")}))
    tree["name"] = "failing gateways"
    return tree


def _divide(name: str) -> Any:
    act = ServiceActivity(component_code="web_divide", name=name)
    act.component.inputs.divisor = Var(type=Var.PLAIN, value=1)
    return act


# The console redraws parts of the page on live changes (the node panel, the pipeline's header,
# the list's rows): an element found a moment ago can be gone by the time it is read or clicked.
# Tests read and click through these, never through an element they keep.

def find(driver: Any, css: str, timeout: float = 20) -> Any:
    """The first element ``css`` once it is shown (for a form field, which no redraw replaces)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def present() -> Any:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        try:
            return found[0] if found and found[0].is_displayed() else None
        except StaleElementReferenceException:
            return None  # redrawn between finding and looking: look again

    return wait_until(present, timeout, 0.05, what=f"{css} in the page")


def on_shown(driver: Any, css: str, use: Callable[[Any], T], timeout: float = 20) -> T:
    """``use`` of the element ``css`` once shown; again on the new one if the page redrew it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException

    def attempt() -> tuple[T] | None:
        try:
            return (use(find(driver, css, timeout)),)
        except StaleElementReferenceException:
            return None

    return wait_until(attempt, timeout, 0.05, what=f"{css} to hold still")[0]


def click(driver: Any, css: str, timeout: float = 20) -> None:
    """Click ``css`` once shown, again if the page redrew it meanwhile."""
    on_shown(driver, css, lambda e: e.click(), timeout)


def read(driver: Any, css: str, attribute: str | None = None, timeout: float = 20) -> str:
    """The text as shown (or ``attribute``) of ``css`` once shown, read again if the page redrew it."""
    return on_shown(driver, css, lambda e: str(e.text if attribute is None else e.get_attribute(attribute)), timeout)


def text(driver: Any, css: str) -> str:
    """The text of ``css`` now ("" when absent), read in the page: immune to redraws."""
    return str(driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : ''",
                                     css))


def attributes(driver: Any, css: str, name: str) -> list[str | None]:
    """``name`` of every element ``css`` now, read in the page: immune to redraws."""
    return list(driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => e.getAttribute(arguments[1]))", css, name))


def count(driver: Any, css: str) -> int:
    """How many elements ``css`` the page has now."""
    return int(driver.execute_script("return document.querySelectorAll(arguments[0]).length", css))
