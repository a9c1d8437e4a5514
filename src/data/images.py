"""Load any image a layout finds as float32 gray in [0, 1]: DICOM, PNG, JPEG, MedMNIST.

DICOM files go through `src.data.dicom` (LUTs, MONOCHROME1). PNG, JPEG and MedMNIST
images are pictures already rendered for display: they are scaled by their bit
depth and never stretched per image, so the model sees the contrast the archive
stored. A MedMNIST image is addressed as `<file.npz>::<split>:<index>`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from src.data.dicom import LUMA, load_dicom
from src.data.skips import UnusableImage

DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = DICOM_SUFFIXES + (".png", ".jpg", ".jpeg")
MEDMNIST_SEPARATOR = "::"


def is_dicom(path) -> bool:
    """DICOM by suffix; a file without an image suffix (PACS exports often name files
    by UID, e.g. `1.2.840.113619.2.55.3.1`) by the 'DICM' marker at byte 128."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return suffix in DICOM_SUFFIXES
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def load_image(path) -> np.ndarray:
    """Float32 2-D gray in [0, 1] from a DICOM, PNG or JPEG file or a MedMNIST member.

    Raises UnusableImage (see `src.data.dicom` for DICOM reasons; "unreadable image"
    for a picture or MedMNIST member that cannot be read).
    """
    path = str(path)
    if MEDMNIST_SEPARATOR in path:
        return _medmnist(path)
    if is_dicom(path):
        return load_dicom(path)
    return _picture(path)


def _picture(path: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode.startswith("I"):
                # 16-bit gray (I;16, or I in older Pillow): convert("L") would clip it.
                return np.asarray(img, dtype=np.float32) / 65535
            # "L" drops alpha and maps palette, RGB and 1-bit with BT.601 luma.
            return np.asarray(img.convert("L"), dtype=np.float32) / 255
    except Exception as exc:  # Pillow reports damage as OSError, SyntaxError, ValueError, ...
        raise UnusableImage("unreadable image", type(exc).__name__) from exc


def _medmnist(address: str) -> np.ndarray:
    file, member = address.rsplit(MEDMNIST_SEPARATOR, 1)
    try:
        split, index = member.split(":")
        image = _medmnist_images(file, split)[int(index)]
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise UnusableImage("unreadable image", f"no MedMNIST member {member!r}: {type(exc).__name__}") from exc
    if image.ndim == 3:  # the RGB datasets (e.g. dermamnist)
        image = image @ LUMA
    return (image / 255).astype(np.float32)


@lru_cache(maxsize=None)
def _medmnist_images(file: str, split: str) -> np.ndarray:
    """`<split>_images` of a MedMNIST .npz, loaded once per process: images are read one by one."""
    with np.load(file) as npz:
        return npz[f"{split}_images"]
