"""Pipeline trees as pure data: the builder DSL, the validator, the compiled graph. No I/O.

What other packages may use is named here; :mod:`culm.builder` and :mod:`culm.validator` are the
public faces with bamboo's names.
"""

from typing import TYPE_CHECKING

from culm._faces import lazy_face

if TYPE_CHECKING:
    from culm.model import limits, timeouts
    from culm.model.compiled import compile_tree
    from culm.model.printable import inert
    from culm.model.tree_ids import walk_tree, with_new_ids
    from culm.model.validator import prepare_tree, tree_warnings, validate_tree

__all__ = [
    # validating and compiling a tree
    "validate_tree",
    "prepare_tree",
    "tree_warnings",
    "compile_tree",
    # a tree's ids
    "walk_tree",
    "with_new_ids",
    # the sizes every id, key and value must fit in
    "limits",
    # node timeouts (timeout_config): the actions and the rules of a config
    "timeouts",
    # text for a terminal or a log: control characters written as escapes
    "inert",
]

# Imported when first used (culm._faces): `from culm.model import limits` does not load the validator.
__getattr__, __dir__ = lazy_face(__name__, {
    **dict.fromkeys(("validate_tree", "prepare_tree", "tree_warnings"), ".validator"),
    "compile_tree": ".compiled",
    **dict.fromkeys(("walk_tree", "with_new_ids"), ".tree_ids"),
    "limits": ".limits",
    "timeouts": ".timeouts",
    "inert": ".printable",
})
