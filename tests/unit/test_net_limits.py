"""Connection limits (``correo.net.limits``): exact counts in one process, and sums over a
real shared-memory table when SMTP workers share the limits with the main process."""

from __future__ import annotations

from correo.net.limits import ConnectionCounts, SharedTable, slot


def test_one_process_counts_exactly() -> None:
    counts = ConnectionCounts(max_total=3, max_per_ip=2)
    assert counts.admit("192.0.2.1") and counts.admit("192.0.2.1")
    assert not counts.admit("192.0.2.1")  # per IP
    assert counts.admit("192.0.2.2")
    assert not counts.admit("192.0.2.3")  # total
    counts.release("192.0.2.1")
    assert counts.admit("192.0.2.3") and counts.total == 3
    counts.release("198.51.100.9")  # never admitted: nothing to release
    assert counts.total == 3


def test_rows_of_a_shared_table_add_up() -> None:
    table = SharedTable.create(3)
    try:
        main, worker0, worker1 = (ConnectionCounts(4, 2, table, row=r) for r in range(3))
        assert main.admit("192.0.2.1")
        assert worker0.admit("192.0.2.1")
        assert not worker1.admit("192.0.2.1")  # 2 already, in two other processes
        assert worker1.admit("192.0.2.2") and worker1.admit("192.0.2.3")
        assert not main.admit("192.0.2.4")  # 4 in all
        worker0.release("192.0.2.1")
        assert worker1.admit("192.0.2.1")
        # a worker dies: the main process clears its row and its connections stop counting
        assert not main.admit("192.0.2.5")
        table.clear_row(2)
        assert main.admit("192.0.2.5") and main.total == 2
        # the slot hash is the same in every process (no per-process hash seed)
        assert slot("192.0.2.1") == slot("192.0.2.1") and 0 <= slot("::1") < 1 << 16
    finally:
        table.close_fd()


def test_a_second_mapping_sees_the_same_counts() -> None:
    """What a worker does with the fd it inherits: map it again."""
    table = SharedTable.create(2)
    try:
        other = SharedTable(table.fd, 2)
        main = ConnectionCounts(10, 1, table, row=0)
        worker = ConnectionCounts(10, 1, other, row=1)
        assert worker.admit("203.0.113.7")
        assert not main.admit("203.0.113.7")
        worker.release("203.0.113.7")
        assert main.admit("203.0.113.7")
    finally:
        table.close_fd()
