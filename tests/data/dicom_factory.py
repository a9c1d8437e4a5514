"""Small, valid DICOM files for tests, written with pydicom.

`write_dicom` turns an array into a Digital X-Ray image file with the header
elements the loaders read (photometric interpretation, bits stored, modality,
view, rescale, window, transfer syntax) and patient identifiers, so that tests
can also check that none of them leaks into messages or logs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

DIGITAL_XRAY_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # For Presentation


def write_dicom(
    path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    view_position: str | None = "PA",
    modality: str | None = "DX",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    transfer_syntax: str | None = None,
    patient_name: str = "Test^Patient",
    patient_id: str = "TEST-0001",
    birth_date: str = "19700101",
    **elements,
) -> Path:
    """Write `pixels` as a DICOM file at `path`; return the path.

    pixels: uint8, uint16, int8 or int16, shaped (rows, columns), (rows, columns, 3)
        for RGB/YBR_FULL, or (frames, rows, columns) for a multi-frame image. Values
        are stored as given: pass them in the `photometric` space (MONOCHROME1:
        high = dark).
    bits_stored: defaults to the dtype's width; values must fit in it.
    view_position, modality: None leaves the element out.
    rescale: (RescaleSlope, RescaleIntercept); window: (WindowCenter, WindowWidth).
    transfer_syntax: a little-endian transfer syntax UID (default Explicit VR Little
        Endian); a compressed one is encoded by `Dataset.compress` (RLE natively,
        JPEG 2000 with pylibjpeg-openjpeg; JPEG-LS needs pyjpegls).
    **elements: further DICOM keywords, set last (they may override the above),
        e.g. `ImageLaterality="L"` or `BitsStored=12`.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DIGITAL_XRAY_IMAGE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    if modality is not None:
        ds.Modality = modality
    if view_position is not None:
        ds.ViewPosition = view_position
    ds.set_pixel_data(
        pixels, photometric, bits_stored or pixels.dtype.itemsize * 8, generate_instance_uid=False
    )
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if transfer_syntax is not None:
        if UID(transfer_syntax).is_compressed:
            ds.compress(transfer_syntax, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = transfer_syntax
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return Path(path)
