"""The public builder DSL (drop-in for ``bamboo_engine.builder``).

Example::

    from culm.builder import EmptyStartEvent, ServiceActivity, EmptyEndEvent, Var, build_tree

    start = EmptyStartEvent()
    act = ServiceActivity(component_code="debug_node")
    act.component.inputs.message = Var(type=Var.PLAIN, value="hello")
    start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start)
"""

from __future__ import annotations

import sys

from culm.model.builder import (
    ConditionalParallelGateway,
    ConvergeGateway,
    Data,
    DataInput,
    Element,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ExecutableEndEvent,
    InitializedRewritableNodeOutput,
    NodeOutput,
    ParallelGateway,
    Params,
    RewritableNodeOutput,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.model.rollback_tokens import generate_pipeline_token

# bamboo's quick start writes ``from bamboo_engine.builder import *`` and then
# ``builder.build_tree(...)``: its star import also exported the ``builder`` submodule. This module
# stands in for it so that the same code works with culm imports.
builder = sys.modules[__name__]

__all__ = [
    # elements
    "Element", "EmptyStartEvent", "EmptyEndEvent", "ExecutableEndEvent", "ServiceActivity", "SubProcess",
    "ParallelGateway", "ExclusiveGateway", "ConditionalParallelGateway", "ConvergeGateway",
    # data objects
    "Data", "Params", "Var", "DataInput", "NodeOutput", "RewritableNodeOutput",
    "InitializedRewritableNodeOutput",
    # building
    "build_tree", "builder",
    # rollback tokens (bamboo's builder.generate_pipeline_token)
    "generate_pipeline_token",
]
