"""Context and variables (plain, splice, lazy), ``${...}`` templates in a bounded sandbox,
gateway conditions.

What other packages may use is named here.
"""

from typing import TYPE_CHECKING

from culm._faces import lazy_face

if TYPE_CHECKING:
    from culm.data import boolrule, context, sandbox, template

__all__ = [
    # the context of a pipeline and the variables in it
    "context",
    # ${...} templates and the sandbox that evaluates them
    "template",
    "sandbox",
    # gateway conditions
    "boolrule",
]

# Imported when first used (culm._faces): `from culm.data import template` does not load the sandbox.
__getattr__, __dir__ = lazy_face(__name__, {name: f".{name}" for name in ("context", "template", "sandbox", "boolrule")})
