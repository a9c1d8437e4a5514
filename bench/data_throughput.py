"""Images per second to decode and preprocess DICOM at 224 px: from disk, from the cache,
and plain `pydicom.dcmread(f).pixel_array` on the same files (the decoding limit).

    python bench/data_throughput.py [--repeats 3] [--image-size 224]

Files: the real chest CR of `pydicom-data` (uncompressed and JPEG 2000) and a
synthetic hospital set (a mix of sites, some JPEG 2000). Writes
bench/results/data_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import pydicom
from omegaconf import OmegaConf
from pydicom.data import get_testdata_file

from src.data.dataset import make_dataset, prepare
from src.data.dicom import load_dicom
from src.data.layouts import Sample
from src.data.skips import SkipLog
from src.data.synthetic import generate
from src.data.transforms import radiograph_transforms

RESULTS = Path(__file__).parent / "results" / "data_throughput.json"


def rate(fn, files: list, repeats: int) -> float:
    """Images per second, best of `repeats` passes over all files."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for f in files:
            fn(f)
        best = min(best, time.perf_counter() - start)
    return len(files) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images-per-hospital", type=int, default=30)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "synthetic", hospitals=3, images_per_hospital=args.images_per_hospital, seed=0)
        synthetic = sorted(str(p) for p in (Path(tmp) / "synthetic").rglob("*.dcm"))
        real = [get_testdata_file("RG1_UNCI.dcm"), get_testdata_file("RG1_J2KR.dcm")]
        data_cfg = OmegaConf.create({"image_size": args.image_size, "cache_dir": f"{tmp}/cache"})
        preprocess = radiograph_transforms(args.image_size)
        results = {}
        for name, files in {"pydicom_data_chest_cr": real, "synthetic_hospitals": synthetic}.items():
            samples = [Sample(f, 0) for f in files]
            assert len(prepare(samples, data_cfg, SkipLog())) == len(files)  # fills the cache
            cached = make_dataset(samples, data_cfg)
            row = {
                "files": len(files),
                "pixel_array": rate(lambda f: pydicom.dcmread(f).pixel_array, files, args.repeats),
                "load_dicom": rate(load_dicom, files, args.repeats),
                "preprocess_from_disk": rate(lambda f: preprocess({"image": f, "label": 0}), files, args.repeats),
                "from_cache": rate(cached.__getitem__, range(len(files)), args.repeats),
            }
            row["ratios_vs_pixel_array"] = {
                k: round(row[k] / row["pixel_array"], 3) for k in ("load_dicom", "preprocess_from_disk", "from_cache")
            }
            results[name] = row

    report = {"image_size": args.image_size, "repeats": args.repeats, "unit": "images per second",
              "machine": platform.machine(), "python": platform.python_version(),
              "pydicom": pydicom.__version__, "results": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    for name, row in results.items():
        print(f"{name} ({row['files']} files), images/s:")
        for key in ("pixel_array", "load_dicom", "preprocess_from_disk", "from_cache"):
            ratio = row["ratios_vs_pixel_array"].get(key, 1.0)
            print(f"  {key:22s} {row[key]:9.1f}   x{ratio:.2f} of pixel_array")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
