"""A refused ``run_pipeline`` sends no signal on any backend (contract: "never for a refused
command"), and a unique key's refusal always comes back as culm's error naming the pipeline, even
when no stored run holds the ids any more (a racing run that was rolled back)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from backends import embedded_runtime_on
from sqlalchemy import create_engine, text

from culm import api, signals
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.errors import InvalidOperationError

pytestmark = pytest.mark.timeout(120)

RACED = "p_raced_and_rolled_back"


def _tree(root_id: str | None = None) -> dict:
    start = EmptyStartEvent()
    start.extend(ServiceActivity(component_code="example_component")).extend(EmptyEndEvent())
    tree = build_tree(start)
    if root_id is not None:
        tree["id"] = root_id
    return tree


class Heard:
    """Every pipeline_event sent while it listens."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def __call__(self, sender: Any, event: Any = None, **_: Any) -> None:
        self.events.append(event.event_type)

    def __enter__(self) -> Heard:
        signals.pipeline_event.connect(self)
        return self

    def __exit__(self, *_: Any) -> None:
        signals.pipeline_event.disconnect(self)


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "mariadb"])
def test_a_taken_pipeline_id_is_refused_without_a_signal(kind: str, tmp_path: Path) -> None:
    with embedded_runtime_on(kind, tmp_path / "taken.db") as rt:
        tree = _tree()
        assert api.run_pipeline(rt, copy.deepcopy(tree)).result
        with Heard() as heard:
            again = api.run_pipeline(rt, copy.deepcopy(tree))
        assert not again.result and f"pipeline {tree['id']} already exists" in again.message
        assert isinstance(again.exc, InvalidOperationError)
        assert heard.events == []


# A unique key that refuses the run's id though no row holds it: what the server reports when a
# run of the same ids held them a moment and was rolled back (a real trigger of the database).
REFUSE = {
    "postgres": [
        "CREATE FUNCTION culm_test_refuse() RETURNS trigger AS $$ BEGIN "
        f"IF NEW.id = '{RACED}' THEN RAISE EXCEPTION 'a racing insert' USING ERRCODE = 'unique_violation'; END IF; "
        "RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER culm_test_refuse BEFORE INSERT ON culm_node FOR EACH ROW EXECUTE FUNCTION culm_test_refuse()",
    ],
    "mariadb": [
        "CREATE TRIGGER culm_test_refuse BEFORE INSERT ON culm_node FOR EACH ROW BEGIN "
        f"IF NEW.id = '{RACED}' THEN SIGNAL SQLSTATE '23000' SET MYSQL_ERRNO = 1062, MESSAGE_TEXT = 'a racing insert'; "
        "END IF; END",
    ],
}


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_a_unique_key_refusal_with_no_taken_id_names_the_pipeline(kind: str, tmp_path: Path) -> None:
    with embedded_runtime_on(kind, tmp_path / "unused.db") as rt:
        engine = create_engine(rt.url)
        try:
            with engine.begin() as conn:
                for statement in REFUSE[kind]:
                    conn.execute(text(statement))
        finally:
            engine.dispose()
        with Heard() as heard:
            refused = api.run_pipeline(rt, _tree(RACED))
        assert not refused.result
        assert isinstance(refused.exc, InvalidOperationError), repr(refused.exc)
        assert f"pipeline {RACED}" in refused.message and "run it again" in refused.message
        assert "already exists" in refused.message  # the service answers 409, as for a taken id
        assert heard.events == []
        assert api.get_pipeline_states(rt, RACED).data == {}  # nothing of it was stored
        assert api.run_pipeline(rt, _tree()).result  # and other runs go on
