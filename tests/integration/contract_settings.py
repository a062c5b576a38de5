"""A user's module that sets bamboo's engine settings the culm way, as a bamboo project sets them in
its Django settings: ``culm.configure`` at import. Only processes that import it through
``$CULM_IMPORTS`` load it (the workers of ``test_contract_settings.py``, and the embedded runtime
of its SQLite variant): in the test process it would change the defaults of every later runtime.
The component and the condition function are those of ``contract_settings_free``.
"""

from __future__ import annotations

from contract_settings_free import only_yes

import culm

culm.configure(
    gateway_strategy=culm.GATEWAY_STRATEGY_FIRST,  # PIPELINE_EXCLUSIVE_GATEWAY_STRATEGY = 2
    expr_func=only_yes,  # PIPELINE_EXCLUSIVE_GATEWAY_EXPR_FUNC
    render_nested_objects=True,  # ENABLE_RENDER_OBJ_BY_MAKO_STRING
)
