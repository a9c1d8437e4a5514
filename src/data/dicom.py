"""Decode a DICOM radiograph into the picture a radiologist sees.

Archives store chest X-rays in many ways: detector values behind a modality LUT
(rescale), a VOI window or LUT chosen by the device, 10-15 bits inside 16-bit
words, MONOCHROME1 (air bright) as well as MONOCHROME2, compressed transfer
syntaxes. A model must see the same picture whichever way a file was written, so
this module applies pydicom's own LUT functions in the standard's order and
returns gray values in [0, 1] with air dark and bone bright. A file that cannot be
used raises `UnusableImage` with the reason only: DICOM headers carry patient
identifiers, and none of them may reach a message or a log.
"""

from __future__ import annotations

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from src.data.skips import UnusableImage

# Computed, digital and conventional radiography; OT: secondary captures of them,
# which often carry no better code.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG", "OT"})
FRONTAL_VIEWS = frozenset({"AP", "PA"})
# ITU-R BT.601 luma: the Y of YCbCr and the weights of Pillow's convert("L"), so a
# colour DICOM, PNG or MedMNIST image turns into the same gray.
LUMA = np.array([0.299, 0.587, 0.114])


def read_dicom_header(path) -> Dataset:
    """The header of a single-image DICOM file, read without its pixel data.

    Raises UnusableImage: "not DICOM", "unsupported" (deflated syntax),
    "no pixel data", "multi-frame".
    """
    try:
        with open(path, "rb") as f:
            ds = dcmread(f, stop_before_pixels=True)
            # dcmread stops at the pixel data tag, or at the end of a file that has
            # none: the test pydicom.pixels.pixel_array itself relies on.
            has_pixels = bool(f.read(1))
    except Exception as exc:  # a damaged header can fail in any of dcmread's parsers
        # `from None`: a parser's message may quote header bytes.
        raise UnusableImage("not DICOM", f"header unreadable: {type(exc).__name__}") from None
    if len(ds) == 0:  # dcmread returns an empty dataset for a file cut inside its file meta
        raise UnusableImage("not DICOM", "empty or truncated header")
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        # dcmread inflates the whole file, so neither the test above nor
        # pixel_array(path) can find its pixel data; such images are rare.
        raise UnusableImage("unsupported", "deflated transfer syntax")
    if not has_pixels:
        # dcmread reads a file cut inside its header as a shorter header; an image
        # header with no pixel data after it is most likely such a file.
        raise UnusableImage("no pixel data", "file ends before its pixel data" if "Rows" in ds else "")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise UnusableImage("multi-frame", f"{frames} frames")
    return ds


def screen_radiograph(ds: Dataset, frontal_only: bool = True) -> None:
    """Raise UnusableImage unless the header describes a (frontal) radiograph.

    A missing Modality or ViewPosition is kept: anonymised exports often drop them.
    A view is frontal when its first word is AP or PA ("AP SUPINE", "PA LLD").
    """
    modality = str(ds.get("Modality") or "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise UnusableImage("not a radiograph", f"Modality {modality}")
    view = str(ds.get("ViewPosition") or "").upper().split()
    if frontal_only and view and view[0] not in FRONTAL_VIEWS:
        raise UnusableImage("lateral view", f"ViewPosition {' '.join(view)}")


def load_dicom(path) -> np.ndarray:
    """The displayed image of a DICOM file: float32, 2-D, in [0, 1], air dark.

    Raises UnusableImage: those of `read_dicom_header`, "undecodable", "unsupported".
    """
    ds = read_dicom_header(path)
    try:
        # Given the path, pydicom decodes straight from the file (pylibjpeg first
        # for compressed syntaxes) and returns YBR colour as RGB.
        pixels = pixel_array(path)
    except Exception as exc:  # truncated data, a codec error, no decoder for the syntax
        syntax = ds.file_meta.get("TransferSyntaxUID")
        raise UnusableImage(
            "undecodable", f"{syntax.name if syntax else 'no transfer syntax'}: {type(exc).__name__}"
        ) from exc
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        # A colour secondary capture is a rendered picture: keep its scale.
        return (pixels @ LUMA / (2**ds.BitsStored - 1)).astype(np.float32)
    photometric = ds.get("PhotometricInterpretation")
    if pixels.ndim != 2 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnusableImage("unsupported", f"{photometric}, array shape {pixels.shape}")
    try:
        gray = _display(pixels, ds)
    except (TypeError, ValueError, NotImplementedError) as exc:  # e.g. a non-numeric RescaleSlope
        raise UnusableImage("unsupported", f"malformed rescale or modality LUT: {type(exc).__name__}") from None
    # MONOCHROME1 is inverted last: the modality LUT and VOI act in the stored sense.
    return (1.0 - gray if photometric == "MONOCHROME1" else gray).astype(np.float32)


def _display(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT, then the first VOI (or the value range), scaled to [0, 1]."""
    values = apply_modality_lut(pixels, ds)
    gray = _voi(values, ds)
    return _scale(values, values.min(), values.max()) if gray is None else gray


def _voi(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The first VOI LUT or window, as apply_voi_lut chooses, scaled to [0, 1]; None without one."""
    lut = ds.get("VOILUTSequence")
    if lut and None not in (lut[0].get("LUTDescriptor"), lut[0].get("LUTData")):
        entries, first, _ = lut[0].LUTDescriptor
        # The inputs at the LUT's two ends give its first and last entries.
        ends = np.array([first, first + (entries or 2**16) - 1])
        values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers; a rescale made floats
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        # pydicom maps a window onto the nominal range of the modality output
        # (BitsStored, rescale); -inf and +inf land on that range's two ends.
        ends = np.array([-np.inf, np.inf])
    else:
        return None
    try:
        low, high = apply_voi_lut(ends, ds)
        out = apply_voi_lut(values, ds)
    except (ValueError, NotImplementedError):  # e.g. a window width below 1, a 9-bit LUT:
        return None  # a broken display hint, not a broken image
    return _scale(out, low, high)


def _scale(values: np.ndarray, low, high) -> np.ndarray:
    """Map [low, high] onto [0, 1] (reversed ends invert); a constant image gives zeros."""
    if high == low:
        return np.zeros(values.shape)
    return np.clip((values.astype(np.float64) - low) / (float(high) - float(low)), 0.0, 1.0)
