"""How deferred PostgreSQL writes are merged into as few statements as is safe (storage.sql._combined)."""

from __future__ import annotations

from culm.storage.sql.base import MAX_COMBINED, _combined, _row_key


def w(sql: str, *params, keys=None):
    return (sql, list(params), keys)


def k(table: str, *pk):
    return ((table, pk),)


def test_writes_to_distinct_rows_become_one_statement_in_order():
    out = _combined([w("INSERT a", 1, keys=k("t", 1)), w("UPDATE b", 2, keys=k("t", 2)),
                     w("DELETE c", 3, keys=k("u", 1))])
    assert out == [("WITH w0 AS (INSERT a), w1 AS (UPDATE b), w2 AS (DELETE c) SELECT 1", [1, 2, 3])]


def test_a_second_write_to_the_same_row_starts_a_new_statement():
    out = _combined([w("INSERT a", 1, keys=k("t", 1)), w("UPDATE a", 2, keys=k("t", 1)),
                     w("UPDATE b", 3, keys=k("t", 2))])
    assert out == [("INSERT a", [1]), ("WITH w0 AS (UPDATE a), w1 AS (UPDATE b) SELECT 1", [2, 3])]


def test_a_write_whose_rows_are_unknown_goes_alone_and_keeps_its_place():
    out = _combined([w("INSERT a", 1, keys=k("t", 1)), w("UPDATE all", 2), w("INSERT b", 3, keys=k("t", 2)),
                     w("INSERT c", 4, keys=k("t", 3))])
    assert out == [("INSERT a", [1]), ("UPDATE all", [2]),
                   ("WITH w0 AS (INSERT b), w1 AS (INSERT c) SELECT 1", [3, 4])]


def test_multi_row_writes_clash_on_any_of_their_rows():
    both = (("t", (1,)), ("t", (2,)))
    out = _combined([w("INSERT many", 1, 2, keys=both), w("UPDATE two", 3, keys=k("t", 2))])
    assert [sql for sql, _ in out] == ["INSERT many", "UPDATE two"]


def test_runs_are_bounded():
    out = _combined([w(f"INSERT {i}", i, keys=k("t", i)) for i in range(MAX_COMBINED + 1)])
    assert len(out) == 2 and out[1] == (f"INSERT {MAX_COMBINED}", [MAX_COMBINED])


def test_row_keys_of_inserts():
    assert _row_key("culm_context_value", [{"pipeline_id": "p", "key": "${a}", "value": 1}]) == \
        (("culm_context_value", ("p", "${a}")),)
    assert _row_key("some_other_table", [{"id": 1}]) is None  # unknown: sent on its own


def test_appends_to_one_table_keep_their_order():
    """Two history (or log, or change) inserts never share a statement: their ids follow the order
    they were appended in. An append and a write elsewhere still combine."""
    hist = _row_key("culm_history", [{"node_id": "n"}])
    out = _combined([w("INSERT h1", 1, keys=hist), w("UPDATE s", 2, keys=k("culm_state", "n")),
                     w("INSERT h2", 3, keys=hist), w("INSERT log", 4, keys=_row_key("culm_log", [{}]))])
    assert out == [("WITH w0 AS (INSERT h1), w1 AS (UPDATE s) SELECT 1", [1, 2]),
                   ("WITH w0 AS (INSERT h2), w1 AS (INSERT log) SELECT 1", [3, 4])]
