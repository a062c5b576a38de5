"""Context and variables (plain, splice, lazy), ``${...}`` templates in a bounded sandbox,
gateway conditions.

What other packages may use is named here.
"""

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
