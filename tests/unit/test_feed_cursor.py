"""FeedCursor: a reader's position in the change feed when rows may become visible out of seq order."""

from __future__ import annotations

from culm.core.feed_cursor import FeedCursor


def test_ordered_moves_to_the_reads_upper_bound():
    cursor = FeedCursor(0, ordered=True, contiguous=True, settle=1.0)
    assert [s for s in (1, 2, 4) if cursor.first_sight(s, 0.0)] == [1, 2, 4]
    cursor.read_upto(5, 0.0)
    assert cursor.position == 5 and not cursor.unsettled


def test_unordered_waits_for_a_hole_and_reports_each_seq_once():
    cursor = FeedCursor(0, ordered=False, contiguous=True, settle=1.0)
    assert [s for s in (1, 2, 4) if cursor.first_sight(s, 0.0)] == [1, 2, 4]
    cursor.read_upto(4, 0.0)
    assert cursor.position == 2 and cursor.unsettled  # 3 may still commit
    assert [s for s in (3, 4) if cursor.first_sight(s, 0.1)] == [3]  # the late one, once
    cursor.read_upto(4, 0.1)
    assert cursor.position == 4 and not cursor.unsettled


def test_unordered_gives_a_hole_up_once_it_settles():
    cursor = FeedCursor(10, ordered=False, contiguous=True, settle=1.0)
    assert cursor.first_sight(12, 0.0)
    cursor.read_upto(12, 0.0)
    assert cursor.position == 10
    cursor.read_upto(12, 0.5)
    assert cursor.position == 10  # 11 may still commit
    cursor.read_upto(12, 1.0)
    assert cursor.position == 12 and not cursor.unsettled  # 11 was rolled back
    assert not cursor.first_sight(11, 1.1)  # given up: below the position


def test_one_roots_reader_does_not_take_a_run_of_its_seqs_for_everything():
    cursor = FeedCursor(0, ordered=False, contiguous=False, settle=1.0)
    assert cursor.first_sight(1, 0.0) and cursor.first_sight(2, 0.0)
    cursor.read_upto(2, 0.0)
    assert cursor.position == 0  # other roots' seqs in between are not this reader's to see
    cursor.read_upto(2, 1.0)
    assert cursor.position == 2
