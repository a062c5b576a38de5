"""The component of ``contract_settings`` and its condition function, without ``culm.configure``:
``test_contract_settings.py`` sets the same settings through ``CULM_*`` variables instead."""

from __future__ import annotations

from culm.components import Component, Service


def only_yes(expr, context, extra_info=None):
    if expr == {"z": 2}:  # a condition that is one ${d['k'][1]}: its object, with render_nested_objects
        return extra_info == {"who": "me"}
    return (
        isinstance(expr, str)
        and expr.startswith("yes")
        and context.get("d", {}).get("k", [None])[0] == 1
        and extra_info == {"who": "me"}
    )


class FreeEchoService(Service):
    def execute(self, data, parent_data):
        data.outputs.value = data.get_one_of_inputs("value")


class FreeEchoComponent(Component):
    name = "settings echo (no configure)"
    code = "cs_echo"
    bound_service = FreeEchoService
