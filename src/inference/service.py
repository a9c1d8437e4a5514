"""The encrypted-diagnosis service (FastAPI): evaluates the secret head on the hospital's ciphertexts.

    GET  /model                  what a hospital needs: model hash, classes, front end settings,
                                 encryption parameters and packing (no weight of the head)
    GET  /front-end              the public front end's arrays (.npz)
    POST /keys                   the hospital's Galois keys (SEAL bytes) -> {"key_id"}; kept in memory
    POST /diagnose/{key_id}?images=n   one ciphertext packing n images' features -> the encrypted scores

The service never holds a secret key: it sees ciphertexts and Galois keys only. Every bad
input gets a 4xx with a one-line reason (`{"detail": ...}`) and the service goes on.
Queries are counted and rate-limited per key (images per minute): a linear head answers
exactly, so about (features + 1) queries would extract it; the log says who asked how much.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque

from fastapi import FastAPI, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from src.inference.ckks import (
    COEFF_MODULUS_BITS,
    MAX_KEY_BYTES,
    POLY_MODULUS_DEGREE,
    SCALE_BITS,
    CiphertextError,
    EncryptedLinear,
    key_id,
)
from src.inference.served_model import ServedModel

log = logging.getLogger("fedcxr.inference")
OCTETS = "application/octet-stream"


class RateLimit:
    """At most `per_minute` images per key over any sliding minute."""

    def __init__(self, per_minute: int):
        self.per_minute, self.served = per_minute, {}

    def take(self, key: str, images: int) -> bool:
        now, window = time.monotonic(), self.served.setdefault(key, deque())
        while window and window[0][0] < now - 60:
            window.popleft()
        for idle in [k for k, w in self.served.items() if k != key and (not w or w[-1][0] < now - 60)]:
            del self.served[idle]  # a key idle for a minute has its whole budget back anyway
        if sum(n for _, n in window) + images > self.per_minute:
            return False
        window.append((now, images))
        return True


def create_app(model: ServedModel, *, rate_per_minute: int = 600, max_keys: int = 16,
               max_key_bytes: int = MAX_KEY_BYTES, max_ciphertext_bytes: int = 1 << 20) -> FastAPI:
    head = EncryptedLinear(model.weight, model.bias)
    layout = head.layout
    keys: OrderedDict[str, object] = OrderedDict()  # key id -> loaded Galois keys, least recently used first
    limit, totals = RateLimit(rate_per_minute), {}
    app = FastAPI(title="fedcxr encrypted diagnosis",
                  description="CKKS-encrypted chest X-ray diagnosis: the image stays at the hospital, "
                              "the model's trained head at the service.")

    async def body(request: Request, cap: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > cap:
            raise HTTPException(413, f"body of {declared} bytes; at most {cap}")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > cap:
                raise HTTPException(413, f"body over {cap} bytes")
        return bytes(data)

    @app.get("/model")
    def describe() -> dict:
        return {"sha256": model.sha256, "classes": model.classes, "model": model.config,
                "encryption": {"scheme": "CKKS", "library": "Microsoft SEAL (TenSEAL sealapi)",
                               "poly_modulus_degree": POLY_MODULUS_DEGREE,
                               "coeff_modulus_bits": list(COEFF_MODULUS_BITS), "scale_bits": SCALE_BITS,
                               "security_bits": 128, "features": layout.features, "padded": layout.padded,
                               "rotations": layout.rotations,
                               "images_per_ciphertext": layout.images_per_ciphertext},
                "limits": {"images_per_minute_per_key": rate_per_minute, "key_bytes": max_key_bytes,
                           "ciphertext_bytes": max_ciphertext_bytes}}

    @app.get("/front-end")
    def front_end() -> Response:
        return Response(model.front_end_bytes(), media_type=OCTETS)

    @app.post("/keys")
    async def register(request: Request) -> dict:
        data = await body(request, max_key_bytes)
        identifier = key_id(data)
        if identifier not in keys:
            try:
                keys[identifier] = await run_in_threadpool(head.load_keys, data)
            except CiphertextError as e:
                raise HTTPException(400, f"keys: {e}") from None
            while len(keys) > max_keys:
                totals.pop(keys.popitem(last=False)[0], None)
            log.info("keys %s registered (%d bytes)", identifier, len(data))
        keys.move_to_end(identifier)
        return {"key_id": identifier}

    @app.post("/diagnose/{identifier}")
    async def diagnose(identifier: str, request: Request, images: int = 1) -> Response:
        galois = keys.get(identifier)  # held: another hospital's registration may evict it while this one uploads
        if galois is None:
            raise HTTPException(404, f"unknown key id {identifier!r}: POST /keys first (keys are kept for the "
                                     f"{max_keys} most recent hospitals)")
        if not 1 <= images <= layout.images_per_ciphertext:
            raise HTTPException(400, f"images={images}: a ciphertext packs 1 to {layout.images_per_ciphertext}")
        data = await body(request, max_ciphertext_bytes)
        try:
            cipher = await run_in_threadpool(head.load_ciphertext, data)
        except CiphertextError as e:
            raise HTTPException(400, f"ciphertext: {e}") from None
        if not limit.take(identifier, images):  # counts answered images: what model extraction needs
            raise HTTPException(429, f"key {identifier}: over {rate_per_minute} images per minute")
        start = time.process_time()
        try:
            answer = await run_in_threadpool(head, cipher, galois, images)
        except CiphertextError as e:
            raise HTTPException(400, f"ciphertext: {e}") from None
        totals[identifier] = totals.get(identifier, 0) + images
        log.info("key %s: %d image(s) in %.3f s CPU, %d served to this key", identifier, images,
                 time.process_time() - start, totals[identifier])
        return Response(answer, media_type=OCTETS)

    return app
