"""The encrypted-diagnosis service as a real uvicorn process over TLS, and the hospital's client against it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from pydicom.data import get_testdata_file

from src.inference import diagnose, serve
from src.inference.ckks import HospitalKeys, Layout
from src.launch.certificates import write_tls_files
from src.launch.processes import free_port
from src.models.registry import build_model
from src.predict import main as predict
from src.server.results import RunRecord

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["normal", "bacterial", "viral"]
RATE = 60  # images per minute per key


def _model_file(run_dir: Path, name: str = "scatter_linear") -> Path:
    cfg = OmegaConf.create({"model": {"name": name, "image_size": 32, "J": 3, "L": 8, "pool": 4, "components": 16}
                            if name == "scatter_linear" else {"name": name}, "data": {"image_size": 32}})
    torch.manual_seed(0)
    model = build_model(cfg.model, len(CLASSES))
    if name == "scatter_linear":
        model.front_end.fit(torch.randn(40, model.front_end.raw_features))
        torch.nn.init.normal_(model.head.weight, std=0.5)
    run_dir.mkdir(parents=True, exist_ok=True)
    RunRecord(run_dir, cfg, CLASSES).save(model.state_dict())
    return run_dir / "model.pt"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    model = _model_file(tmp)
    tls = write_tls_files(tmp / "tls")
    port = free_port()
    log = open(tmp / "service.log", "w")  # a file, not a pipe nobody reads: a full pipe would stall the service
    proc = subprocess.Popen([sys.executable, "-m", "src.inference.serve", "--model", str(model), "--port", str(port),
                             "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key),
                             "--rate", str(RATE)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url, deadline = f"https://127.0.0.1:{port}", time.monotonic() + 120
    while True:
        try:
            httpx.get(f"{url}/model", verify=str(tls.ca_cert)).raise_for_status()
            break
        except httpx.HTTPError:
            assert proc.poll() is None, (tmp / "service.log").read_text()
            assert time.monotonic() < deadline, "the service did not come up"
            time.sleep(0.3)
    yield url, tls.ca_cert, model
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((48, 40)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.dcm").write_text("not a dicom")
    return [get_testdata_file("RG1_UNCR.dcm", download=False), str(folder)]  # a real chest CR, MONOCHROME1


def _rows(text: str) -> dict[str, dict]:
    return {row["image"]: row for row in map(json.loads, text.splitlines())}


def test_encrypted_diagnosis_agrees_with_the_plaintext_model(service, images, capsys):
    url, ca, model = service
    assert diagnose.main([*images, "--service", url, "--ca", str(ca), "--json"]) == 0
    encrypted = capsys.readouterr()
    assert "model sha256" in encrypted.err and "broken.dcm" in encrypted.err
    assert predict([*images, "--model", str(model), "--json"]) == 0
    plain = _rows(capsys.readouterr().out)
    encrypted = _rows(encrypted.out)
    assert set(encrypted) == set(plain) and len(plain) == 4
    for image, row in plain.items():
        p, q = row["probabilities"], encrypted[image]["probabilities"]
        assert max(abs(p[c] - q[c]) for c in CLASSES) < 1e-3
        assert max(p, key=p.get) == max(q, key=q.get)


def test_a_pinned_hash_refuses_another_model_and_an_unreachable_service_is_named(service, images, capsys):
    url, ca, _ = service
    assert diagnose.main([*images, "--service", url, "--ca", str(ca), "--model-sha256", "0" * 64]) == 2
    assert "not the pinned" in capsys.readouterr().err
    assert diagnose.main([*images, "--service", f"https://127.0.0.1:{free_port()}", "--ca", str(ca)]) == 2
    assert "cannot reach the service" in capsys.readouterr().err
    assert diagnose.main([*images, "--service", "http://203.0.113.7:8443"]) == 2  # refused before any request
    assert "plain http:// only to a loopback address" in capsys.readouterr().err


def test_bad_input_gets_a_one_line_4xx_and_the_service_keeps_serving(service):
    url, ca, _ = service
    with httpx.Client(base_url=url, verify=str(ca)) as http:
        _check_bad_input(http)


def _check_bad_input(http: httpx.Client) -> None:
    info = http.get("/model").json()
    keys = HospitalKeys(Layout(features=info["encryption"]["features"], classes=len(CLASSES)))
    key_id = http.post("/keys", content=keys.galois_keys).json()["key_id"]
    good = keys.encrypt(np.zeros((2, info["encryption"]["features"])))

    def status(path, body, **params):
        response = http.post(path, content=body, params=params)
        reason = response.json()["detail"] if response.status_code >= 400 else ""
        assert "\n" not in reason
        return response.status_code, reason

    assert status("/keys", b"garbage")[0] == 400
    assert status(f"/diagnose/{key_id}", b"garbage", images=2)[0] == 400
    assert status(f"/diagnose/{key_id}", good[: len(good) // 2], images=2)[0] == 400
    assert status(f"/diagnose/{'f' * 32}", good, images=2)[0] == 404
    assert status(f"/diagnose/{key_id}", good, images=10_000)[0] == 400
    assert status(f"/diagnose/{key_id}", good + b"\x00" * (1 << 20), images=2)[0] == 413
    code, reason = status(f"/diagnose/{key_id}", good, images=2)
    assert code == 200
    assert keys.decrypt(http.post(f"/diagnose/{key_id}", content=good, params={"images": 2}).content, 2).shape == (2, 3)
    served = 2 + 2  # refused requests are not answers: they do not count
    while served + 2 <= RATE:
        assert status(f"/diagnose/{key_id}", good, images=2)[0] == 200
        served += 2
    code, reason = status(f"/diagnose/{key_id}", good, images=2)
    assert code == 429 and "per minute" in reason
    assert http.get("/model").status_code == 200 and http.get("/openapi.json").status_code == 200


def test_the_service_refuses_plain_http_off_loopback_and_models_it_cannot_encrypt(tmp_path, capsys):
    model = _model_file(tmp_path / "a")
    with pytest.raises(SystemExit):
        serve.main(["--model", str(model), "--host", "0.0.0.0"])
    assert "plain HTTP only on a loopback address" in capsys.readouterr().err
    cnn = _model_file(tmp_path / "b", "small_cnn")
    assert serve.main(["--model", str(cnn)]) == 2
    err = capsys.readouterr().err
    assert "'small_cnn' cannot run under CKKS" in err and "scatter_linear" in err
