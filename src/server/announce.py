"""Lines from the ServerApp for the person running the federation.

`run_simulation.py` shows the ServerApp's log lines that start with ANNOUNCE and keeps
the rest in the federation's log file. A module of its own so that the launcher can
read it without importing the ServerApp's torch.
"""

ANNOUNCE = "[fedcxr] "


def announce(text: str) -> None:
    print(ANNOUNCE + text, flush=True)
