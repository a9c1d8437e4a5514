"""`python -m src.inference.serve --model <run dir>/model.pt`: serve encrypted diagnosis (uvicorn).

With --tls-cert/--tls-key it serves HTTPS on any address; without them plain HTTP, and
only on a loopback address (a hospital's ciphertexts and keys are not secret, but the
model hash it pins and the answers it decrypts must come from this service).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from src.inference.loopback import is_loopback
from src.inference.served_model import NotServable, ServedModel
from src.inference.service import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a run's model for CKKS-encrypted diagnosis. Reads "
                                     "model.pt; writes nothing (logs queries per key to stderr).")
    parser.add_argument("--model", type=Path, required=True, help="model.pt of a run")
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s (plain HTTP only on loopback)")
    parser.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain (HTTPS)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--rate", type=int, default=600, help="images per minute per hospital key")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if not args.tls_cert and not is_loopback(args.host):
        parser.error(f"--host {args.host}: plain HTTP only on a loopback address; give --tls-cert and --tls-key")
    try:
        model = ServedModel.load(args.model)
    except (OSError, KeyError, NotServable) as e:
        print(f"error: {args.model}: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("fedcxr.inference").info("serving %s (sha256 %s, %s)", args.model, model.sha256,
                                               model.config["name"])
    uvicorn.run(create_app(model, rate_per_minute=args.rate), host=args.host, port=args.port,
                ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
                ssl_keyfile=str(args.tls_key) if args.tls_key else None, log_level="info",
                timeout_graceful_shutdown=10)  # requests in flight finish; an idle client cannot hold a stop up
    return 0


if __name__ == "__main__":
    sys.exit(main())
