"""An order whose charge fails until an operator retries it with a smaller amount.

The pipeline of the operator session in ``docs/cli.md``: ``culm run examples/operator_session.py``
fails at ``charge_card``; ``culm retry charge_card --data '{"amount": 80}'`` finishes it. Run as a
script, it plays that session through the API on a temporary database.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.components import Component, Service

LIMIT = 100


class ChargeService(Service):
    """Charges ``amount``; fails (with the reason in ``ex_data``) above the limit."""

    def execute(self, data, parent_data):
        amount = data.get_one_of_inputs("amount")
        if not isinstance(amount, int) or amount > LIMIT:
            data.outputs.ex_data = f"amount {amount} is over the limit of {LIMIT}"
            return False
        self.logger.info("charged %s", amount)
        data.outputs.charged = amount
        return True


class ChargeComponent(Component):
    code = "charge"
    name = "Charge a card"
    bound_service = ChargeService


def build_pipeline() -> dict:
    """start -> charge card (amount 250) -> end, with fixed ids so that the session can name them."""
    start = EmptyStartEvent(id="order_start")
    charge = ServiceActivity(id="charge_card", name="charge card", component_code="charge")
    charge.component.inputs.amount = Var(type=Var.PLAIN, value=250)
    start.extend(charge).extend(EmptyEndEvent(id="order_end"))
    tree = build_tree(start, id="order_1234")
    tree["name"] = "order 1234"
    return tree


def state(runtime: culm.Runtime, node_id: str, wanted: str, timeout: float = 30.0) -> str:
    """Poll until ``node_id`` is ``wanted`` (or time is up); return the last state seen."""
    deadline = time.monotonic() + timeout
    seen = "UNKNOWN"
    while time.monotonic() < deadline and seen != wanted:
        entry = api.get_children_states(runtime, node_id).data.get(node_id)
        seen = entry["state"] if entry else "UNKNOWN"
        time.sleep(0.05)
    return seen


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, culm.Runtime(f"sqlite:///{Path(tmp) / 'orders.db'}") as runtime:
        api.run_pipeline(runtime, build_pipeline())
        print("charge_card", state(runtime, "charge_card", "FAILED"))
        api.retry_node(runtime, "charge_card", {"amount": 80})
        final = state(runtime, "order_1234", "FINISHED")
        print("order_1234", final)
        return 0 if final == "FINISHED" else 1


if __name__ == "__main__":
    raise SystemExit(main())
