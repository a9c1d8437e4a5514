"""A hospital's warm worker: the heavy handlers run in one long-lived process at the hospital.

Flower's SuperNode starts a fresh `flwr-clientapp` process for every message (flwr 1.42,
either isolation mode), and a train or evaluate handler then spends seconds importing
torch, Opacus and MONAI and rebuilding the model before a round's fraction of a second
of work. The launcher starts one worker beside each SuperNode (`python -m
src.client.worker`); the per-message ClientApp hands it the message and the node's
Context over a loopback connection authenticated with a key only the hospital holds
(multiprocessing's HMAC challenge), and answers with what the worker returns. The
worker is on the hospital's side of the trust boundary: it sees what the ClientApp
would see, nothing leaves the machine but the ClientApp's usual answer.

Either process may crash alone: without a reachable worker the ClientApp runs the
handler itself (as before, only slower); a worker that dies in the middle of a
message fails that message (the server sees a vanished hospital for the round) and
is not asked again: running the handler a second time could spend the privacy budget
twice.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import threading
import time
import traceback
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Callable

from flwr.app import Context, Message

from src.client.hospital import node_settings

log = logging.getLogger(__name__)
Handler = Callable[[Message, Context], Message]


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def delegate(handler: Handler, msg: Message, context: Context) -> Message:
    """`handler(msg, context)`, run by the hospital's worker when it has one (node config `worker`)."""
    settings = node_settings(context)
    if "worker" not in settings:
        return handler(msg, context)
    try:
        conn = Client(_address(str(settings["worker"])), authkey=Path(str(settings["worker-key"])).read_bytes())
    except OSError as e:
        log.warning("hospital worker at %s unreachable (%s): running %s in this process",
                    settings["worker"], e, handler.__name__)
        return handler(msg, context)
    with conn:
        conn.send((handler.__name__, msg, context))
        try:
            status, content, state = conn.recv()
        except EOFError:
            raise RuntimeError(f"the hospital worker died while running {handler.__name__}") from None
    if status != "ok":
        raise RuntimeError(f"hospital worker, {handler.__name__}: {content}")
    for key in list(context.state):  # the handler's changes to the node's state (secure aggregation's session)
        del context.state[key]
    for key, record in state.items():
        context.state[key] = record
    return Message(content, reply_to=msg)


def exit_with(parent: int) -> None:
    """End this process once `parent` is gone (a launcher killed outright cannot stop its worker)."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                log.info("parent process %d is gone: stopping", parent)
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def serve(address: tuple[str, int], key: bytes, handlers: str = "src.client.app") -> None:
    """Answer the ClientApp's hand-overs one at a time (a SuperNode runs one message at a time),
    each naming a function of the module `handlers`."""
    listener = Listener(address, authkey=key)  # listening first: a hand-over waits while the imports below run
    app = importlib.import_module(handlers)
    if hasattr(app, "warm_up"):
        app.warm_up()  # torch, Opacus, MONAI: imported once, before the first message
    log.info("hospital worker ready on %s:%d", *address)
    while True:
        try:
            conn = listener.accept()
        except Exception as e:  # a peer without the key, or one that hung up during the challenge
            log.warning("refused a connection: %s", e)
            continue
        with conn:
            try:
                name, msg, context = conn.recv()
                start = time.perf_counter()
                reply = getattr(app, name)(msg, context)
                conn.send(("ok", reply.content, context.state))
                log.info("%s in %.2fs", name, time.perf_counter() - start)
            except Exception as e:
                log.error("%s", traceback.format_exc())
                try:
                    conn.send(("error", f"{type(e).__name__}: {e}", None))
                except OSError:
                    pass


def main() -> None:
    parser = argparse.ArgumentParser(description="A hospital's warm worker for its SuperNode's ClientApp "
                                     "(started by the launcher beside the SuperNode).")
    parser.add_argument("address", help="host:port to listen on (loopback)")
    parser.add_argument("key_file", type=Path, help="the shared secret the ClientApp authenticates with")
    parser.add_argument("--handlers", default="src.client.app", help="the module whose functions it runs")
    parser.add_argument("--parent-pid", type=int, help="stop when this process (the launcher) is gone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.parent_pid:
        exit_with(args.parent_pid)
    serve(_address(args.address), args.key_file.read_bytes(), args.handlers)


if __name__ == "__main__":
    main()
