"""`python -m src.inference.diagnose <image|folder|csv>... --service https://host:port`: encrypted diagnosis.

At the hospital: read each image through the data layer (DICOM LUTs, MONOCHROME1, …),
run the public front end in the clear (scattering, standardisation, projection: arrays the
service publishes, computed from the public reference set), encrypt the features under a
CKKS key pair made here (the secret key never leaves this process), send, decrypt the
scores and turn them into probabilities. Up to `images_per_ciphertext` images travel in
one ciphertext. The service sees ciphertexts and evaluation keys only; this side never
receives the head's weights. `--model-sha256` pins the served model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from src.data.inputs import image_paths
from src.inference.loopback import is_loopback
from src.inference.ckks import COEFF_MODULUS_BITS, POLY_MODULUS_DEGREE, SCALE_BITS, HospitalKeys, Layout
from src.inference.served_model import front_end_module
from src.predict import decode, show


class ServiceError(RuntimeError):
    pass


class EncryptedDiagnosis:
    """A session with the service: its model's description, the public front end, this hospital's keys."""

    def __init__(self, service: str, ca: Path | None = None, pin: str | None = None, timeout: float = 60.0):
        url = httpx.URL(service)
        if url.scheme != "https" and not (url.scheme == "http" and is_loopback(url.host)):
            raise ServiceError(f"--service {service}: https:// (plain http:// only to a loopback address: over it "
                               "anyone on the path could forge the model's hash and the answers)")
        self.http = httpx.Client(base_url=service, verify=str(ca) if ca else True, timeout=timeout)
        try:
            self._open(pin)
        except BaseException:
            self.close()
            raise

    def _open(self, pin: str | None) -> None:
        """The model's description (checked against `pin`), the front end, and this session's keys at the service."""
        self.info = self._get("/model").json()
        if pin and self.info["sha256"] != pin:
            raise ServiceError(f"the service serves model {self.info['sha256']}, not the pinned {pin}")
        he = self.info["encryption"]
        if (he["scheme"], he["poly_modulus_degree"], tuple(he["coeff_modulus_bits"]), he["scale_bits"]) != (
                "CKKS", POLY_MODULUS_DEGREE, COEFF_MODULUS_BITS, SCALE_BITS):
            raise ServiceError(f"the service uses encryption this client does not: {he}")
        self.classes = self.info["classes"]
        self.front_end = front_end_module(self.info["model"], self._get("/front-end").content)
        self.keys = HospitalKeys(Layout(features=he["features"], classes=len(self.classes)))
        self.key_id = self._post("/keys", self.keys.galois_keys).json()["key_id"]

    def close(self) -> None:
        """Closes the connection: a service shutting down waits for open ones."""
        self.http.close()

    def __enter__(self) -> "EncryptedDiagnosis":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, url: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.HTTPError as e:
            raise ServiceError(f"cannot reach the service at {self.http.base_url}: {e}") from None
        if response.status_code >= 400:
            try:
                reason = response.json()["detail"]
            except (ValueError, KeyError):
                reason = response.text[:200]
            raise ServiceError(f"{method} {url}: {response.status_code} {reason}")
        return response

    def _get(self, url: str) -> httpx.Response:
        return self._request("GET", url)

    def _post(self, url: str, data: bytes, **params) -> httpx.Response:
        return self._request("POST", url, content=data, params=params,
                             headers={"content-type": "application/octet-stream"})

    @torch.no_grad()
    def features(self, images: list[torch.Tensor]) -> np.ndarray:
        return self.front_end(torch.stack(images)).double().numpy()

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(n, classes) probabilities of n ≤ images_per_ciphertext feature rows: one round trip."""
        answer = self._post(f"/diagnose/{self.key_id}", self.keys.encrypt(features), images=len(features))
        scores = self.keys.decrypt(answer.content, len(features))
        return torch.softmax(torch.from_numpy(scores), dim=1).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Diagnose images with a fedcxr service without revealing them: "
                                     "reads images (DICOM, PNG, JPEG), folders or a CSV naming them; prints the "
                                     "probabilities and round-trip time per image.")
    parser.add_argument("images", nargs="+", help="image files, folders (recursive) or a CSV (column `image`)")
    parser.add_argument("--service", required=True, help="https://host:port (http:// on loopback only)")
    parser.add_argument("--ca", type=Path, help="CA certificate that signed the service's TLS certificate")
    parser.add_argument("--model-sha256", help="refuse a service that serves any other model")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    args = parser.parse_args(argv)
    try:
        session = EncryptedDiagnosis(args.service, args.ca, args.model_sha256)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"service {args.service}: model sha256 {session.info['sha256']} ({session.info['model']['name']}), "
          f"key {session.key_id}", file=sys.stderr)
    with session:
        return diagnose_all(session, image_paths(args.images), args.json)


def diagnose_all(session: EncryptedDiagnosis, paths: list[Path], as_json: bool) -> int:
    """Each batch of images that fits one ciphertext, encrypted, diagnosed and shown; unreadable ones skipped."""
    batch_size = session.info["encryption"]["images_per_ciphertext"]
    done = 0
    for first in range(0, len(paths), batch_size):
        batch = [(p, image) for p in paths[first:first + batch_size]
                 if (image := decode(p, int(session.info["model"]["image_size"]))) is not None]
        if not batch:
            continue
        start = time.perf_counter()
        try:
            probabilities = session.probabilities(session.features([image for _, image in batch]))
        except ServiceError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        seconds = time.perf_counter() - start
        for (path, _), row in zip(batch, probabilities):
            show(path, session.classes, row.tolist(), seconds, as_json)
        done += len(batch)
    if done < len(paths):
        print(f"{len(paths) - done} of {len(paths)} image(s) skipped", file=sys.stderr)
    return 0 if done else 2


if __name__ == "__main__":
    sys.exit(main())
