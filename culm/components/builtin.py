"""Built-in example components, registered when :mod:`culm.components` is imported.

They make a pipeline runnable without writing any component, which is what quick starts,
smoke tests and benchmarks need. They yield (``__culm_yields__``): a user's class with the same
code and version replaces them without a conflict, as bamboo's docs define their own
``example_component`` right after the quick start.
"""

from __future__ import annotations

from culm.components.component import Component
from culm.components.service import DataObject, Service

__all__ = ["ExampleComponent", "ExampleService", "PipeExampleComponent", "PipeExampleService"]

__group_name__ = "Examples"


class ExampleService(Service):
    """Does nothing and succeeds."""

    def execute(self, data: DataObject, parent_data: DataObject) -> bool:
        """Succeeds without touching the data."""
        return True


class PipeExampleService(Service):
    """Copies every input to an output of the same key."""

    def execute(self, data: DataObject, parent_data: DataObject) -> bool:
        """Copies the inputs to the outputs and succeeds."""
        data.update_outputs(data.inputs_copy())
        return True


class ExampleComponent(Component):
    """``example_component``: a no-op activity."""

    __culm_yields__ = True
    code = "example_component"
    name = "Example component"
    bound_service = ExampleService


class PipeExampleComponent(Component):
    """``pipe_example_component``: echoes its inputs as outputs."""

    __culm_yields__ = True
    code = "pipe_example_component"
    name = "Pipe example component"
    bound_service = PipeExampleService
