"""Encrypted diagnosis: what it costs each side, and whether it agrees with the plaintext model.

    python bench/encrypted_inference.py <run dir>      # a finished run (its model.pt and split.json)

On the run's pooled test set: the hospital's front end (in the clear), key generation and
key size, encryption and decryption, the service's evaluation (CPU seconds, this process),
bytes up and down per image, for one image per ciphertext and for full ciphertexts; then
agreement of the encrypted probabilities with the plaintext model's (`src.predict`) and
both accuracies. Beside it, in the same run, TenSEAL's stock path for an encrypted CNN
(its tutorial network: conv 7×7 stride 3 → x² → FC 64 → x² → FC, `im2col_encoding`,
`conv2d_im2col`, `mm`) on the same first test image, resized to the tutorial's 28×28: at
64×64 its im2col encoding (400 windows × 49) no longer fits one ciphertext of N = 8192
("can't execute conv2d_im2col on chunked vectors"). Untrained: it is there for its cost.
And TenSEAL's stock vector–matrix product (`CKKSVector.mm`, all power-of-two rotation keys)
for the same served head on the same first image's features, at fedcxr's parameters: the
same computation without fedcxr's packing (its answer also carries partial sums of the
weights, which fedcxr's mask removes).
Writes bench/results/encrypted_inference.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import tenseal as ts
import torch

from src.data.federation import Federation
from src.inference.ckks import EncryptedLinear, HospitalKeys
from src.inference.served_model import ServedModel, front_end_module
from src.predict import decode, load_model

RESULTS = Path(__file__).parent / "results" / "encrypted_inference.json"


def cpu(fn, *args):
    start = time.process_time()
    out = fn(*args)
    return out, time.process_time() - start


def tenseal_stock_cnn(image: torch.Tensor, classes: int) -> dict:
    """TenSEAL's tutorial CNN on one image, its own encodings and kernels (timing only)."""
    torch.manual_seed(0)
    size, kernel, stride, channels, hidden = 28, 7, 3, 4, 64
    image = torch.nn.functional.interpolate(image[None], size=(size, size), mode="area")[0]
    windows = ((size - kernel) // stride + 1) ** 2
    conv = torch.nn.Conv2d(1, channels, kernel, stride)
    fc1, fc2 = torch.nn.Linear(windows * channels, hidden), torch.nn.Linear(hidden, classes)
    (ctx, keygen_s) = cpu(lambda: _tutorial_context())
    enc_x, encrypt_s = cpu(lambda: ts.im2col_encoding(ctx, image[0].tolist(), kernel, kernel, stride))
    enc_x, windows_nb = enc_x

    def evaluate():
        y = ts.CKKSVector.pack_vectors([enc_x.conv2d_im2col(k[0].tolist(), windows_nb) + float(b)
                                        for k, b in zip(conv.weight.data, conv.bias.data)])
        y.square_()
        y = y.mm(fc1.weight.data.T.tolist()) + fc1.bias.data.tolist()
        y.square_()
        return y.mm(fc2.weight.data.T.tolist()) + fc2.bias.data.tolist()

    out, service_s = cpu(evaluate)
    _, decrypt_s = cpu(out.decrypt)
    return {"keygen_s": keygen_s, "key_bytes": len(ctx.serialize(save_secret_key=False)),
            "encrypt_s": encrypt_s, "service_s": service_s, "decrypt_s": decrypt_s,
            "up_bytes": len(enc_x.serialize()), "down_bytes": len(out.serialize())}


def tenseal_stock_head(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> dict:
    """The served linear head by TenSEAL's own `mm` on one image's features (N = 8192, 60+40+40+60, 2^40)."""
    def make():
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
        ctx.global_scale = 2**40
        ctx.generate_galois_keys()
        return ctx

    ctx, keygen_s = cpu(make)
    enc_x, encrypt_s = cpu(lambda: ts.ckks_vector(ctx, features.tolist()))
    out, service_s = cpu(lambda: enc_x.mm(weight.T.tolist()) + bias.tolist())
    scores, decrypt_s = cpu(out.decrypt)
    return {"keygen_s": keygen_s, "key_bytes": len(ctx.serialize(save_secret_key=False)),
            "encrypt_s": encrypt_s, "service_s": service_s, "decrypt_s": decrypt_s,
            "up_bytes": len(enc_x.serialize()), "down_bytes": len(out.serialize()),
            "max_score_difference": float(np.abs(np.asarray(scores) - (weight @ features + bias)).max())}


def _tutorial_context():
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[31, 26, 26, 26, 26, 26, 26, 31])
    ctx.global_scale = 2**26
    ctx.generate_galois_keys()
    return ctx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    served = ServedModel.load(args.run_dir / "model.pt")
    plain_model, classes, size = load_model(args.run_dir / "model.pt")
    test = Federation.load(args.run_dir / "split.json").select(split="test")
    images = [(s, x) for s in test if (x := decode(Path(s.path), size)) is not None]
    labels = np.array([s.label for s, _ in images])
    batch = torch.stack([x for _, x in images])
    with torch.no_grad():
        plain = torch.softmax(plain_model(batch), dim=1).numpy()
    front_end = front_end_module(served.config, served.front_end_bytes())
    with torch.no_grad():
        features, front_s = cpu(lambda: front_end(batch).double().numpy())

    service = EncryptedLinear(served.weight, served.bias)
    hospital, keygen_s = cpu(HospitalKeys, service.layout)
    keys = service.load_keys(hospital.galois_keys)
    per = service.layout.images_per_ciphertext
    encrypted, timing = [], {"encrypt_s": 0.0, "service_s": 0.0, "decrypt_s": 0.0, "up": 0, "down": 0}
    for first in range(0, len(features), per):
        rows = features[first:first + per]
        up, t_enc = cpu(hospital.encrypt, rows)
        down, t_srv = cpu(lambda: service(service.load_ciphertext(up), keys, len(rows)))
        scores, t_dec = cpu(hospital.decrypt, down, len(rows))
        encrypted.append(torch.softmax(torch.from_numpy(scores), dim=1).numpy())
        for k, v in (("encrypt_s", t_enc), ("service_s", t_srv), ("decrypt_s", t_dec), ("up", len(up)),
                     ("down", len(down))):
            timing[k] += v
    encrypted = np.concatenate(encrypted)
    n = len(features)
    single_up, single_enc = cpu(hospital.encrypt, features[:1])
    single_down, single_srv = cpu(lambda: service(service.load_ciphertext(single_up), keys, 1))
    _, single_dec = cpu(hospital.decrypt, single_down, 1)

    fedcxr = {
        "images": n, "images_per_ciphertext": per, "keygen_s": keygen_s, "key_bytes": len(hospital.galois_keys),
        "front_end_s_per_image": front_s / n,
        "batched": {"encrypt_s_per_image": timing["encrypt_s"] / n, "service_s_per_image": timing["service_s"] / n,
                    "decrypt_s_per_image": timing["decrypt_s"] / n, "up_bytes_per_image": timing["up"] / n,
                    "down_bytes_per_image": timing["down"] / n},
        "one_image": {"encrypt_s": single_enc, "service_s": single_srv, "decrypt_s": single_dec,
                      "up_bytes": len(single_up), "down_bytes": len(single_down)},
        "agreement": float(np.mean(encrypted.argmax(1) == plain.argmax(1))),
        "max_probability_difference": float(np.abs(encrypted - plain).max()),
        "accuracy_plain": float(np.mean(plain.argmax(1) == labels)),
        "accuracy_encrypted": float(np.mean(encrypted.argmax(1) == labels)),
    }
    stock = tenseal_stock_cnn(images[0][1], len(classes))
    head = tenseal_stock_head(features[0], served.weight, served.bias)
    report = {"machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
              "run_dir": str(args.run_dir), "model_sha256": served.sha256, "fedcxr": fedcxr,
              "tenseal_stock_cnn_one_image": stock, "tenseal_stock_mm_same_head_one_image": head,
              "ratios": {"service_cpu_stock_over_fedcxr_one_image": stock["service_s"] / single_srv,
                         "upload_stock_over_fedcxr_one_image": stock["up_bytes"] / len(single_up),
                         "service_cpu_stock_mm_over_fedcxr_one_image": head["service_s"] / single_srv,
                         "keys_stock_mm_over_fedcxr": head["key_bytes"] / fedcxr["key_bytes"]}}
    one = fedcxr["one_image"]
    print(f"{'':28s} {'fedcxr, 1 image':>16s} {'fedcxr, batched':>16s} {'stock mm, head':>15s} {'TenSEAL CNN':>12s}")
    print(f"{'hospital encrypt+decrypt s':28s} {one['encrypt_s'] + one['decrypt_s']:16.4f} "
          f"{fedcxr['batched']['encrypt_s_per_image'] + fedcxr['batched']['decrypt_s_per_image']:16.4f} "
          f"{head['encrypt_s'] + head['decrypt_s']:15.4f} {stock['encrypt_s'] + stock['decrypt_s']:12.4f}")
    print(f"{'service CPU s':28s} {one['service_s']:16.4f} {fedcxr['batched']['service_s_per_image']:16.4f} "
          f"{head['service_s']:15.4f} {stock['service_s']:12.3f}")
    print(f"{'up KiB':28s} {one['up_bytes'] / 1024:16.1f} {fedcxr['batched']['up_bytes_per_image'] / 1024:16.1f} "
          f"{head['up_bytes'] / 1024:15.1f} {stock['up_bytes'] / 1024:12.1f}")
    print(f"{'down KiB':28s} {one['down_bytes'] / 1024:16.1f} "
          f"{fedcxr['batched']['down_bytes_per_image'] / 1024:16.1f} {head['down_bytes'] / 1024:15.1f} "
          f"{stock['down_bytes'] / 1024:12.1f}")
    print(f"{'keys (sent once) MiB, keygen s':28s} {fedcxr['key_bytes'] / 2**20:9.1f}, {keygen_s:.2f}s "
          f"{'':16s} {head['key_bytes'] / 2**20:8.1f}, {head['keygen_s']:.2f}s "
          f"{stock['key_bytes'] / 2**20:6.1f}, {stock['keygen_s']:.2f}s")
    print(f"front end at the hospital (clear): {fedcxr['front_end_s_per_image']:.4f} s/image; agreement "
          f"{fedcxr['agreement']:.4f} on {n} pooled test images, max |Δp| {fedcxr['max_probability_difference']:.2e}, "
          f"accuracy {fedcxr['accuracy_plain']:.4f} plain / {fedcxr['accuracy_encrypted']:.4f} encrypted")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
