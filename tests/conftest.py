"""One torch thread per test process, and Ctrl-C that reaches the runs the tests start.

The suite's two xdist workers share the machine's 2 cores with each other and with the
processes of the end-to-end runs, and torch threads beyond the cores only spin against one
another (OpenMP's idle threads wait busily). In collection order the long runs seldom
overlap and this changed little (5:30 → 5:17 on 2 cores, timed by hand); with the runs
ordered so that two went at once, the suite spent 11 minutes of CPU with two threads, 7.6
with one.

A shell without job control starts a background command (`python -m pytest &`) with SIGINT
ignored, and every process it starts inherits that: the tests that press Ctrl-C on a run
would then see it run on to the end. A Python handler is not inherited across `exec`, so
installing Python's own here gives the runs the default back.
"""

import os
import signal

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; the runs' processes inherit it
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
