"""A user's own ``example_component``, as bamboo's docs define one right after the quick start: it
replaces the demo component culm ships, without a conflict.

The harness's workers import it through ``$CULM_IMPORTS``; the test process imports it only inside
the test that needs it and puts the demo back afterwards (every other test of the session runs the
demo).
"""

from __future__ import annotations

from culm.components import Component, Service


class MyExampleService(Service):
    def execute(self, data, parent_data):
        data.outputs.who = "the user's example_component"
        return True


class MyExampleComponent(Component):
    name = "my example"
    code = "example_component"
    bound_service = MyExampleService
