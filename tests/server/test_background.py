import threading

import pytest

from src.server.background import Background


def test_tasks_run_in_order_off_the_calling_thread():
    background, seen = Background(), []
    with background:
        for i in range(20):
            background.submit(lambda i=i: seen.append((i, threading.current_thread() is threading.main_thread())))
    assert seen == [(i, False) for i in range(20)]


def test_a_failure_waits_for_settle_and_the_tasks_after_it_still_run():
    """Mid-round a failed plot must not cut the round short: its answers are still to be recorded."""
    background, failed, ran = Background(), threading.Event(), []

    def fail():
        failed.set()
        raise OSError("disk full")

    background.submit(fail)
    failed.wait()
    background.submit(ran.append, 1)
    with pytest.raises(OSError, match="disk full"):
        background.settle()
    assert ran == [1]
    background.settle()  # told once


def test_settle_waits_for_the_tasks_queued():
    background, go, ran = Background(), threading.Event(), []
    background.submit(lambda: go.wait(10) and ran.append(1))
    threading.Timer(0.2, go.set).start()
    background.settle()
    assert ran == [1]


def test_the_loops_own_failure_is_the_one_raised(caplog):
    """A round that fails while a plot failed too: the run stops for the round's reason; the plot's is logged."""
    background = Background()
    with pytest.raises(KeyError, match="round 3"):
        with background:
            background.submit(lambda: 1 / 0)
            raise KeyError("round 3")
    assert "a report task failed too" in caplog.text and "ZeroDivisionError" in caplog.text


def test_a_loop_that_ends_well_raises_a_failed_task():
    background = Background()
    with pytest.raises(ZeroDivisionError):
        with background:
            background.submit(lambda: 1 / 0)


def test_every_failed_task_is_told(caplog):
    background, go = Background(), threading.Event()
    background.submit(lambda: go.wait() and 1 / 0)
    background.submit(lambda: [][1])
    go.set()
    with pytest.raises(ZeroDivisionError):
        background.settle()
    assert "IndexError" in caplog.text
