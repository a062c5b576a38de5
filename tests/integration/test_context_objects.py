"""Objects a component or a lazy variable puts in the context, used by an untrusted template.

A component may output an object whose methods reach the network or the disk (a
``requests.Session``: ``${sess.get("http://169.254.169.254/...")}`` is SSRF from the worker), and a
lazy variable may hand out a file. By default a template reads such an object's data attributes
only; calling its methods, running its properties, iterating or indexing it fails the node (or the
gateway) with ``ex_data`` naming the input and the expression, and the object's code never runs
(docs/data-and-variables.md, "Objects in the context"). ``culm.data.sandbox.TRUST_CONTEXT_OBJECTS``
lifts that for trusted deployments.
"""

from __future__ import annotations

import pytest
from components import client_calls
from engine_fixtures import chain, children, finish, outputs, run, wait_pipeline, wait_state
from test_engine_data import echo

from culm.builder import (
    ConditionalParallelGateway,
    ConvergeGateway,
    Data,
    DataInput,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    NodeOutput,
    Params,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.data import sandbox

pytestmark = pytest.mark.timeout(120)


def client_pipeline(*templates: str) -> tuple[dict, ServiceActivity, list[ServiceActivity]]:
    """A t_client node whose output is ``${client}``, then one echo node per template."""
    producer = ServiceActivity(component_code="t_client")
    producer.component.inputs.url = Var(type=Var.PLAIN, value="http://169.254.169.254")
    users = [echo(text) for text in templates]
    data = Data(inputs={"${client}": NodeOutput(source_act=producer.id, source_key="client")})
    return build_tree(chain(producer, *users), data=data), producer, users


@pytest.mark.parametrize(
    ("template", "refusal"),
    [
        ("GET ${client.get('/latest/meta-data/iam')}", "method 'get'"),
        ("${client.token}", "property 'token'"),
        ("${[row for row in client]}", "iterating"),
        ("${client['users']}", "indexing"),
        ("${'%(users)s' % client}", "formatting from"),
        ("token: ${client}", "__str__"),
        ("${client == 'client'}", "__eq__"),
        ("${client + 'x'}", "__add__"),
        ("${'%s' % client}", "__str__"),
        ("${[client]}!", "__str__"),
    ],
)
def test_a_template_cannot_use_what_an_output_object_can_do(runtime, template, refusal):
    tree, _producer, (user,) = client_pipeline(template)
    before = client_calls()
    run(runtime, tree)
    wait_state(runtime, user.id, "FAILED", timeout=30)
    ex = outputs(runtime, user.id)["ex_data"]
    assert "input 'x'" in ex and refusal in ex and "ReachingClient" in ex, ex
    assert "TRUST_CONTEXT_OBJECTS" in ex, ex
    assert client_calls() == before  # the object's code never ran


def test_a_template_reads_the_data_attributes_of_an_output_object(runtime):
    tree, _producer, (user,) = client_pipeline("${client.url}/${client.kind.upper()}")
    finish(runtime, tree, timeout=30)
    assert outputs(runtime, user.id)["out"] == "http://169.254.169.254/HTTP!"


def test_a_lazy_variable_handing_out_a_file_cannot_be_read_by_a_template(runtime, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    act = echo("${[line for line in f]}")
    tree = build_tree(chain(act), data=Data(inputs={"${f}": Var(type=Var.LAZY, custom_type="t_lazy_file",
                                                            value=str(secret))}))
    run(runtime, tree)
    wait_state(runtime, act.id, "FAILED", timeout=30)
    ex = outputs(runtime, act.id)["ex_data"]
    assert "iterating" in ex and "TextIOWrapper" in ex and "root:x" not in ex, ex


def gateway_tree(gateway) -> tuple[dict, list[ServiceActivity]]:
    producer = ServiceActivity(component_code="t_client")
    producer.component.inputs.url = Var(type=Var.PLAIN, value="http://svc")
    branches = [echo("a"), echo("b")]
    start = EmptyStartEvent()
    start.extend(producer).extend(gateway).connect(*branches).to(gateway).converge(ConvergeGateway()).extend(
        EmptyEndEvent())
    data = Data(inputs={"${client}": NodeOutput(source_act=producer.id, source_key="client")})
    return build_tree(start, data=data), branches


@pytest.mark.parametrize("kind", [ExclusiveGateway, ConditionalParallelGateway])
@pytest.mark.parametrize(
    ("condition", "refusal"),
    [
        ("'${client.get(\"/admin\")}' == 'fetched /admin'", "method 'get'"),
        # what splicing and comparing it would run (its own __str__, __eq__)
        ("${client} == 'client'", "__str__"),
        ("${client == 'client'} == True", "__eq__"),
    ],
)
def test_a_gateway_condition_cannot_call_an_output_object(runtime, kind, condition, refusal):
    gw = kind(conditions={0: condition, 1: "1 == 1"})
    tree, branches = gateway_tree(gw)
    before = client_calls()
    run(runtime, tree)
    wait_state(runtime, gw.id, "FAILED", timeout=30)
    ex = outputs(runtime, gw.id)["ex_data"]
    assert refusal in ex and "ReachingClient" in ex and "TRUST_CONTEXT_OBJECTS" in ex, ex
    assert not set(children(runtime, tree["id"])) & {b.id for b in branches}
    assert client_calls() == before


@pytest.mark.parametrize("kind", [ExclusiveGateway, ConditionalParallelGateway])
def test_a_gateway_condition_reads_an_output_object_attribute(runtime, kind):
    gw = kind(conditions={0: "'${client.url}' == 'http://svc'", 1: "'${client.kind}' == 'ftp'"})
    tree, branches = gateway_tree(gw)
    finish(runtime, tree, timeout=30)
    reached = children(runtime, tree["id"])
    assert branches[0].id in reached and branches[1].id not in reached


@pytest.mark.embedded_only
def test_a_trusted_deployment_lets_templates_call_output_objects(runtime, monkeypatch):
    monkeypatch.setattr(sandbox, "TRUST_CONTEXT_OBJECTS", True)
    tree, _producer, (user,) = client_pipeline("${client.get('/health')}")
    before = client_calls()
    finish(runtime, tree, timeout=30)
    assert outputs(runtime, user.id)["out"] == "fetched /health!"
    assert client_calls() == [*before, "get /health"]
    wait_pipeline(runtime, tree["id"], "FINISHED")



def test_a_subprocess_param_cannot_call_an_output_object(runtime):
    producer = ServiceActivity(component_code="t_client")
    sub = SubProcess(start=chain(echo("${p}")), data=Data(inputs={"${p}": DataInput(type=Var.PLAIN, value="")}),
                     params=Params({"${p}": Var(type=Var.SPLICE, value="${client.get('/p')}")}))
    data = Data(inputs={"${client}": NodeOutput(source_act=producer.id, source_key="client")})
    tree = build_tree(chain(producer, sub), data=data)
    before = client_calls()
    run(runtime, tree)
    wait_state(runtime, sub.id, "FAILED", timeout=30)
    ex = outputs(runtime, sub.id)["ex_data"]
    assert "param '${p}'" in ex and "method 'get'" in ex and "client.get" in ex, ex
    assert client_calls() == before


def test_a_splice_variable_cannot_call_an_output_object(runtime):
    producer = ServiceActivity(component_code="t_client")
    user = echo("${s}")
    data = Data(inputs={"${client}": NodeOutput(source_act=producer.id, source_key="client"),
                        "${s}": Var(type=Var.SPLICE, value="${client.get('/s')}")})
    tree = build_tree(chain(producer, user), data=data)
    before = client_calls()
    run(runtime, tree)
    wait_state(runtime, user.id, "FAILED", timeout=30)
    ex = outputs(runtime, user.id)["ex_data"]
    assert "${s}" in ex and "method 'get'" in ex, ex
    assert client_calls() == before
