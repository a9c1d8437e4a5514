"""ServerApp: weighted averaging of the first `min-nodes` replies of each round, one
progress line per round on stdout (it ends up in the run's log)."""

import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from toyfl.task import DIM, W_TRUE

app = ServerApp()


def _gather(grid: Grid, msgs: list[Message], quorum: int, timeout: float) -> list[Message]:
    """Push, then pull every 0.2 s (send_and_receive sleeps 3 s between pulls) until
    `quorum` replies are in: a SuperNode that vanished does not hold the round up."""
    pending = set(grid.push_messages(msgs))
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending and len(replies) < quorum and time.monotonic() < deadline:
        for reply in grid.pull_messages(pending):
            pending.discard(reply.metadata.reply_to_message_id)
            if reply.has_content():
                replies.append(reply)
        time.sleep(0.2)
    return replies


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    rounds, min_nodes = int(rc["num-server-rounds"]), int(rc["min-nodes"])
    deadline = time.monotonic() + float(rc["wait-nodes"])
    while len(nodes := sorted(grid.get_node_ids())) < min_nodes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {min_nodes} nodes online")
        time.sleep(0.5)
    w = np.zeros(DIM)
    for rnd in range(1, rounds + 1):
        if rnd == int(rc["crash-at-round"]):
            raise RuntimeError(f"toy ServerApp crashes at round {rnd} as asked")
        t0 = time.monotonic()
        msgs = [Message(RecordDict({"arrays": ArrayRecord([w])}), dst_node_id=n,
                        message_type="train") for n in sorted(grid.get_node_ids())]
        replies = _gather(grid, msgs, min_nodes, float(rc["round-timeout"]))
        if not replies:
            raise RuntimeError(f"round {rnd}: no replies")
        counts = [int(r.content["metrics"]["num-examples"]) for r in replies]
        w = sum(c * r.content["arrays"].to_numpy_ndarrays()[0]
                for c, r in zip(counts, replies)) / sum(counts)
        names = sorted(str(r.content["info"]["hospital"]) for r in replies)
        print(f"TOY round {rnd}/{rounds}: {len(replies)} replies from {','.join(names)}, "
              f"error {float(np.linalg.norm(w - W_TRUE)):.4f}, "
              f"{time.monotonic() - t0:.2f}s", flush=True)
        time.sleep(float(rc["round-pause"]))
    print("TOY done", flush=True)
