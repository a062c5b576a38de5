"""What the bamboo guide example tests share: the embedded runtime as the guides create it, the
waits, and the components, lazy variable and interval generator the component and lazy variable
guides define (re-expressed; the stubs the guides leave are filled in).
"""

from __future__ import annotations

import datetime
import math

import pytest

from culm import Runtime, api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.components import AbstractIntervalGenerator, Component, Service, StaticIntervalGenerator
from culm.variables import LazyVariable

STATE_KEYS = {"id", "state", "root_id:", "parent_id", "version", "loop", "retry", "skip", "error_ignorable",
              "error_ignored", "created_time", "started_time", "archived_time", "children"}


# What the workers of the harness-style backends import: the modules defining what the guides use.
DOCS_IMPORTS = "bamboo_suite_components,bamboo_docs_support"
DOCS_RUNTIMES = ["sqlite", "postgres-redis", "mariadb-rabbitmq"]


@pytest.fixture(scope="module")
def docs_harness(tmp_path_factory):
    """The harness-style backends of ``contract_support`` (``culm worker --db URL --broker URL``, the
    components from ``$CULM_IMPORTS`` only), their workers importing :data:`DOCS_IMPORTS`."""
    from contract_support import harness_backends  # here: the workers import this module too

    yield from harness_backends(tmp_path_factory, DOCS_IMPORTS, workers=2)


@pytest.fixture(name="runtime", params=DOCS_RUNTIMES)
def docs_runtime(request, tmp_path, monkeypatch, docs_harness):
    """The guides write ``BambooDjangoRuntime()``: the embedded default (here on a file of this
    test), or a runtime submitting to ``culm worker`` processes on PostgreSQL + Redis and MariaDB +
    RabbitMQ, started as the acceptance harness starts them."""
    if request.param != "sqlite":
        yield docs_harness(request.param).runtime()
        return
    monkeypatch.setenv("CULM_DATABASE_URL", f"sqlite:///{tmp_path / 'docs.db'}")
    rt = Runtime()
    yield rt
    rt.close()


def states_of(runtime, pipeline):
    return api.get_pipeline_states(runtime=runtime, root_id=pipeline["id"]).data


def wait_finished(runtime, pipeline, timeout=20):
    def finished():
        states = states_of(runtime, pipeline)
        return states if states and states[pipeline["id"]]["state"] == "FINISHED" else None

    from support import wait_until  # here: the harness's workers import this module without tests/

    return wait_until(finished, timeout=timeout, what=f"pipeline {pipeline['id']} did not finish")


def wait_node(runtime, node_id, state, timeout=20):
    def reached():
        found = api.get_children_states(runtime, node_id).data
        return found[node_id] if found and found[node_id]["state"] == state else None

    from support import wait_until

    return wait_until(reached, timeout=timeout, what=f"node {node_id} did not become {state}")


def inputs_after_run(runtime, pipeline, node):
    """Run ``pipeline`` to its end and return the inputs ``node`` was given."""
    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    wait_finished(runtime, pipeline)
    return api.get_execution_data_inputs(runtime, node.id).data


def executed(states, pipeline):
    return {entry["id"] for entry in states[pipeline["id"]]["children"].values()}


def one_node(code):
    """start -> one activity of ``code`` -> end: (tree, activity)."""
    start = EmptyStartEvent()
    act = ServiceActivity(component_code=code)
    start.extend(act).extend(EmptyEndEvent())
    return build_tree(start), act


# -- custom_component.md ---------------------------------------------------------------------------
class FactorialCalculateService(Service):
    def execute(self, data, parent_data):
        n = data.get_one_of_inputs("n")
        if not isinstance(n, int):
            data.outputs.ex_data = "n must be a integer!"
            return False
        data.outputs.factorial_of_n = math.factorial(n)
        return True

    def inputs_format(self):
        return [Service.InputItem(name="integer n", key="n", type="int", required=True)]

    def outputs_format(self):
        return [Service.OutputItem(name="factorial of n", key="factorial_of_n", type="int")]


class FactorialCalculateComponent(Component):
    name = "FactorialCalculateComponent"
    code = "fac_cal_comp"
    bound_service = FactorialCalculateService


class DocsPollService(Service):
    """The guide's periodic poll: ``_poll_status`` answers 1 (running) twice, then 0 (done)."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0)

    def _get_poll_url(self):
        return "http://example.invalid/task/1"

    def _poll_status(self, poll_url, polled):
        return 0 if polled >= 2 else 1

    def execute(self, data, parent_data):
        data.outputs.poll_url = self._get_poll_url()
        return True

    def schedule(self, data, parent_data, callback_data=None):
        polled = data.get_one_of_outputs("polled", 0) + 1
        data.outputs.polled = polled
        status = self._poll_status(data.get_one_of_outputs("poll_url"), polled)
        if status == 0:
            self.finish_schedule()
        elif status < 0:
            data.outputs.ex_data = f"task failed with code: {status}"
            return False
        return True


class DocsPollComponent(Component):
    name = "docs poll"
    code = "docs_guide_poll"
    bound_service = DocsPollService


class LinearIntervalGenerator(AbstractIntervalGenerator):
    def next(self):
        super().next()
        return self.count


class DocsCallbackService(Service):
    __need_schedule__ = True
    __multi_callback_enabled__ = False

    def execute(self, data, parent_data):
        return True

    def schedule(self, data, parent_data, callback_data=None):
        status = self.callback_data["status"]
        if status < 0:
            data.outputs.ex_data = f"task failed with code: {status}"
            return False
        self.finish_schedule()


class DocsMultiCallbackService(DocsCallbackService):
    __multi_callback_enabled__ = True

    def schedule(self, data, parent_data, callback_data=None):
        status = self.callback_data["status"]
        if status < 0:
            data.outputs.ex_data = f"task failed with code: {status}"
            return False
        elif status < 1:
            return True
        self.finish_schedule()


class DocsCallbackComponent(Component):
    name = "docs callback"
    code = "docs_guide_callback"
    bound_service = DocsCallbackService


class DocsMultiCallbackComponent(Component):
    name = "docs multi callback"
    code = "docs_guide_multi_callback"
    bound_service = DocsMultiCallbackService


# -- engine_hook.md --------------------------------------------------------------------------------
class DocsHookService(Service):
    """The hook guide's ``CustomService``: its four hooks with the guide's signatures (each returns
    True), filled in to leave a mark in the outputs; a polling node, so no hook gets a payload.
    ``pre_skip_node`` is one of the guide's read-only hooks: what it sets is not kept."""

    __need_run_hook__ = True
    __need_schedule__ = True
    interval = StaticIntervalGenerator(0)

    def execute(self, data, parent_data):
        if data.get_one_of_inputs("fail_in") == "execute":
            raise RuntimeError("execute failed as the test asked")
        return True

    def schedule(self, data, parent_data, callback_data=None):
        if data.get_one_of_inputs("fail_in") == "schedule":
            raise RuntimeError("schedule failed as the test asked")
        self.finish_schedule()
        return True

    def node_execute_exception(self, data, parent_data):
        data.set_outputs("marks", [*data.get_one_of_outputs("marks", []), "node_execute_exception"])
        return True

    def node_schedule_exception(self, data, parent_data, callback_data=None):
        data.set_outputs("marks", [*data.get_one_of_outputs("marks", []), "node_schedule_exception"])
        data.set_outputs("schedule_exception_payload", callback_data)
        return True

    def node_enter(self, data, parent_data):
        data.set_outputs("marks", [*data.get_one_of_outputs("marks", []), "node_enter"])
        return True

    def node_finish(self, data, parent_data):
        data.set_outputs("marks", [*data.get_one_of_outputs("marks", []), "node_finish"])
        return True

    def pre_skip_node(self, data, parent_data):
        data.set_outputs("marks", [*data.get_one_of_outputs("marks", []), "pre_skip_node"])
        return True


class DocsHookComponent(Component):
    name = "docs hook"
    code = "docs_guide_hook"
    bound_service = DocsHookService


class FormatSupportCurrentTime(LazyVariable):
    code = "format_support_current_time"
    name = "current time in a chosen format"

    def get_value(self):
        time_format = self.value.get("time_format", "%Y-%m-%d %H:%M:%S").strip()
        return datetime.datetime.now().strftime(time_format)
