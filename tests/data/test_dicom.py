import logging
import traceback
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.pixels import convert_color_space, get_decoder, pixel_array
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from src.data.dicom import LUMA, load_dicom, read_dicom_header, screen_radiograph
from src.data.skips import SkipLog, UnusableImage
from tests.data.dicom_factory import write_dicom

SITE_PACKAGES = Path(pydicom.__file__).resolve().parents[1]


def pydicom_file(name: str) -> str:
    """A file of pydicom's own test set or of the pydicom-data package, never downloaded."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not installed locally (is pydicom-data installed?)"
    assert Path(path).resolve().is_relative_to(SITE_PACKAGES), path
    return path


def reason(call, *args) -> str:
    with pytest.raises(UnusableImage) as info:
        call(*args)
    return info.value.reason


def ramp(low: int, high: int, shape=(32, 48), dtype=np.uint16) -> np.ndarray:
    return np.linspace(low, high, shape[0] * shape[1]).round().astype(dtype).reshape(shape)


# --- real radiographs (pydicom-data) ---------------------------------------------
# RG1 is a chest CR (MONOCHROME1, 15 bits stored, window 15000/30000). Its lossless
# twin pair is UNCR/J2KR; RG1_UNCI is the decompressed *lossy* J2KI, not J2KR's twin.


@pytest.mark.parametrize("image", ["RG1", "RG3"])
def test_lossless_jpeg2000_decodes_to_its_uncompressed_twin(image):
    uncompressed = load_dicom(pydicom_file(f"{image}_UNCR.dcm"))
    assert np.array_equal(load_dicom(pydicom_file(f"{image}_J2KR.dcm")), uncompressed)


def test_rg1_unci_is_the_lossy_twin_and_matches_j2kr_within_lossy_error():
    """RG1_UNCI is RG1_J2KI (10:1 lossy JPEG 2000) decompressed: identical to it, and
    within the lossy error of the lossless J2KR."""
    unci = load_dicom(pydicom_file("RG1_UNCI.dcm"))
    assert np.array_equal(unci, load_dicom(pydicom_file("RG1_J2KI.dcm")))
    difference = np.abs(unci - load_dicom(pydicom_file("RG1_J2KR.dcm")))
    assert difference.mean() < 0.003 and difference.max() < 0.02  # measured: 0.0017 and 0.0134


def test_real_radiograph_is_float32_2d_in_unit_range():
    image = load_dicom(pydicom_file("RG1_UNCR.dcm"))
    assert image.dtype == np.float32
    assert image.shape == (1955, 1841)
    assert 0.0 <= image.min() < image.max() <= 1.0


def region(image, rows, cols) -> float:
    h, w = image.shape
    return image[int(rows[0] * h) : int(rows[1] * h), int(cols[0] * w) : int(cols[1] * w)].mean()


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm"])
def test_monochrome1_chest_shows_lungs_dark_and_spine_bright(name):
    image = load_dicom(pydicom_file(name))
    spine = region(image, (0.30, 0.60), (0.44, 0.52))  # spine and mediastinum
    right_lung = region(image, (0.25, 0.45), (0.15, 0.30))
    left_lung = region(image, (0.25, 0.45), (0.65, 0.80))
    # measured: spine 0.87, lungs 0.59 and 0.55
    assert spine > right_lung + 0.15 and spine > left_lung + 0.15


@pytest.mark.parametrize("windowed", [True, False])
def test_monochrome2_copy_of_a_monochrome1_file_displays_the_same(tmp_path, windowed):
    original = dcmread(pydicom_file("RG1_UNCR.dcm"))
    bits = original.BitsStored
    mirrored = (2**bits - 1 - original.pixel_array).astype(np.uint16)
    # Mirroring the stored values mirrors the window: c' = 2**bits - c in pydicom's
    # LINEAR formula; without a window both files are scaled by their min/max.
    window = (2**bits - original.WindowCenter, original.WindowWidth) if windowed else None
    copy = write_dicom(
        tmp_path / "mono2.dcm", mirrored, bits_stored=bits, window=window, modality="CR"
    )
    if not windowed:
        del original.WindowCenter, original.WindowWidth
        original.save_as(tmp_path / "mono1.dcm")
    expected = load_dicom(pydicom_file("RG1_UNCR.dcm") if windowed else tmp_path / "mono1.dcm")
    np.testing.assert_allclose(load_dicom(copy), expected, atol=1e-6)


# --- modality LUT, VOI, bits stored -----------------------------------------------


@pytest.mark.parametrize("window", [None, (1500, 2000)])
def test_rescale_gives_the_same_image_as_prerescaled_values(tmp_path, window):
    stored = ramp(600, 2000)
    rescaled = write_dicom(tmp_path / "a.dcm", stored, bits_stored=12, rescale=(2, -1000), window=window)
    plain = write_dicom(tmp_path / "b.dcm", 2 * stored - 1000, window=window)
    np.testing.assert_allclose(load_dicom(rescaled), load_dicom(plain), atol=1e-6)


def test_window_clips_below_and_above_and_is_linear_between(tmp_path):
    stored = ramp(0, 4095)
    image = load_dicom(write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, window=(2048, 1024)))
    assert np.all(image[stored <= 1535] == 0.0)
    assert np.all(image[stored >= 2561] == 1.0)
    inside = (stored > 1536) & (stored < 2560)
    assert np.all(np.diff(image[inside]) >= 0)
    assert image[stored == 2048] == pytest.approx(0.5, abs=1e-3)


def test_broken_window_is_ignored(tmp_path):
    stored = ramp(100, 300)
    broken = load_dicom(write_dicom(tmp_path / "w0.dcm", stored, window=(200, 0)))
    np.testing.assert_allclose(broken, load_dicom(write_dicom(tmp_path / "no.dcm", stored)))


def test_voi_lut_sequence_is_applied_and_scaled_by_its_output_range():
    # vlut_04: 8-bit image, VOI LUT 256 entries -> 0..65535 in steps of 257
    path = pydicom_file("vlut_04.dcm")
    np.testing.assert_allclose(load_dicom(path), pixel_array(path) / 255, atol=1e-6)


def test_bits_stored_12_ignores_the_unused_high_bits(tmp_path):
    stored = ramp(0, 4095)
    clean = write_dicom(tmp_path / "clean.dcm", stored, bits_stored=12)
    # overlay-style garbage in bits 12-15 (set_pixel_data refuses it, so set BitsStored after)
    dirty = write_dicom(tmp_path / "dirty.dcm", stored | 0xF000, BitsStored=12, HighBit=11)
    assert np.array_equal(load_dicom(dirty), load_dicom(clean))


def test_without_voi_the_real_value_range_is_stretched(tmp_path):
    image = load_dicom(write_dicom(tmp_path / "narrow.dcm", ramp(1000, 1200), bits_stored=12))
    assert image.min() == 0.0 and image.max() == 1.0


def test_constant_image_gives_zeros(tmp_path):
    image = load_dicom(write_dicom(tmp_path / "flat.dcm", np.full((8, 8), 700, np.uint16)))
    assert image.dtype == np.float32 and not image.any()


# --- compressed transfer syntaxes ---------------------------------------------------


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
@pytest.mark.parametrize(
    "pixels, bits",
    [(ramp(0, 4095), 12), (ramp(0, 65535), 16), (ramp(0, 255, dtype=np.uint8), 8)],
)
def test_lossless_encodings_decode_to_the_uncompressed_image(tmp_path, syntax, pixels, bits):
    noisy = pixels ^ np.random.default_rng(0).integers(0, 8, pixels.shape).astype(pixels.dtype)
    plain = write_dicom(tmp_path / "plain.dcm", noisy, bits_stored=bits)
    packed = write_dicom(tmp_path / "packed.dcm", noisy, bits_stored=bits, transfer_syntax=syntax)
    assert dcmread(packed).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(load_dicom(packed), load_dicom(plain))


@pytest.mark.parametrize(
    "compressed",
    ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"],
)
def test_pydicom_compressed_files_decode_to_their_uncompressed_twin(compressed):
    assert np.array_equal(load_dicom(pydicom_file(compressed)), load_dicom(pydicom_file("MR_small.dcm")))


@pytest.mark.parametrize(
    "name, syntax",
    [
        ("JPEG-LL.dcm", JPEGLosslessSV1),  # JPEG lossless, process 14 SV1, signed 16-bit
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", JPEGLosslessSV1),
        ("JPEGLSNearLossless_16.dcm", JPEGLSNearLossless),
        ("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless),
        ("RG1_J2KR.dcm", JPEG2000Lossless),
        ("MR_small_RLE.dcm", RLELossless),
    ],
)
def test_pylibjpeg_plugins_decode_every_compressed_syntax(name, syntax):
    path = pydicom_file(name)
    header = dcmread(path, stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID == syntax
    # pydicom tries gdcm, then pylibjpeg, then pillow; gdcm is not installed, and for
    # JPEG lossless and JPEG-LS pylibjpeg-libjpeg is the only decoder we have.
    assert "pylibjpeg" in get_decoder(syntax).available_plugins
    image = load_dicom(path)
    assert image.shape == (header.Rows, header.Columns) and image.dtype == np.float32
    assert 0.0 <= image.min() < image.max() <= 1.0
    assert np.array_equal(pixel_array(path, decoding_plugin="pylibjpeg"), pixel_array(path))


# --- colour secondary captures ---------------------------------------------------------


def test_rgb_secondary_capture_becomes_luminance():
    path = pydicom_file("SC_rgb.dcm")
    image = load_dicom(path)
    assert image.ndim == 2 and image.dtype == np.float32
    np.testing.assert_allclose(image, pixel_array(path) @ LUMA / 255, atol=1e-6)


@pytest.mark.parametrize("name", ["SC_ybr_full_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_ybr_secondary_capture_is_converted_once(name):
    # pydicom 3 already returns YBR_FULL(_422) as RGB; converting again would be wrong.
    expected = pixel_array(pydicom_file("SC_rgb.dcm")) @ LUMA / 255
    np.testing.assert_allclose(load_dicom(pydicom_file(name)), expected, atol=2 / 255)


def test_ybr_full_written_from_rgb_gives_the_rgb_luminance(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    image = load_dicom(write_dicom(tmp_path / "ybr.dcm", ybr, photometric="YBR_FULL", modality="OT"))
    np.testing.assert_allclose(image, rgb @ LUMA / 255, atol=1.5 / 255)


# --- screening and rejects ----------------------------------------------------------------


def test_multi_frame_is_rejected(tmp_path):
    path = write_dicom(tmp_path / "cine.dcm", np.stack([ramp(0, 99)] * 2))
    assert reason(read_dicom_header, path) == "multi-frame"
    assert reason(load_dicom, path) == "multi-frame"


def test_ct_slice_is_not_a_radiograph():
    ds = read_dicom_header(pydicom_file("CT_small.dcm"))
    with pytest.raises(UnusableImage) as info:
        screen_radiograph(ds)
    assert (info.value.reason, info.value.detail) == ("not a radiograph", "Modality CT")


@pytest.mark.parametrize("modality", ["CR", "DX", "OT", None])
def test_radiograph_modalities_and_missing_modality_are_kept(tmp_path, modality):
    screen_radiograph(read_dicom_header(write_dicom(tmp_path / "x.dcm", ramp(0, 9), modality=modality)))


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL", "LAT", "XTABLE LATERAL"])
def test_lateral_views_are_rejected_only_when_frontal_only(tmp_path, view):
    ds = read_dicom_header(write_dicom(tmp_path / "lat.dcm", ramp(0, 9), view_position=view))
    assert reason(screen_radiograph, ds) == "lateral view"
    screen_radiograph(ds, frontal_only=False)


@pytest.mark.parametrize("view", ["PA", "AP", "AP SUPINE", "", None])
def test_frontal_and_missing_views_are_kept(tmp_path, view):
    screen_radiograph(read_dicom_header(write_dicom(tmp_path / "pa.dcm", ramp(0, 9), view_position=view)))


def without_pixel_data(path: Path) -> Path:
    ds = dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    return path


def test_file_without_pixel_data_is_rejected(tmp_path):
    path = without_pixel_data(write_dicom(tmp_path / "empty.dcm", ramp(0, 9)))
    assert reason(read_dicom_header, path) == "no pixel data"
    assert reason(load_dicom, path) == "no pixel data"


def truncated(source, dest: Path, size: int | None = None) -> Path:
    data = Path(source).read_bytes()
    dest.write_bytes(data[: len(data) // 2 if size is None else size])
    return dest


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KR.dcm"])
def test_file_cut_in_its_pixel_data_is_undecodable(tmp_path, name):
    path = truncated(pydicom_file(name), tmp_path / "half.dcm")
    read_dicom_header(path)  # the header is intact
    assert reason(load_dicom, path) == "undecodable"


def test_file_cut_in_its_file_meta_is_not_dicom(tmp_path):
    path = truncated(pydicom_file("RG1_UNCR.dcm"), tmp_path / "cut.dcm", 300)
    assert reason(load_dicom, path) == "not DICOM"


def test_file_cut_before_its_pixel_data_has_no_pixel_data(tmp_path):
    # dcmread returns the elements before a cut without complaint (unless the cut
    # falls inside a sequence), so a header cut short reads as a shorter header.
    source = Path(pydicom_file("RG1_UNCR.dcm"))
    path = truncated(source, tmp_path / "cut.dcm", source.read_bytes().find(b"\xe0\x7f\x10\x00"))
    with pytest.raises(UnusableImage) as info:
        load_dicom(path)
    assert (info.value.reason, info.value.detail) == ("no pixel data", "file ends before its pixel data")


def test_text_file_named_dcm_is_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("not an image\n" * 20)
    assert reason(read_dicom_header, path) == "not DICOM"
    assert reason(load_dicom, path) == "not DICOM"


def test_palette_colour_is_unsupported(tmp_path):
    path = write_dicom(tmp_path / "pal.dcm", ramp(0, 255, dtype=np.uint8), photometric="PALETTE COLOR")
    assert reason(load_dicom, path) == "unsupported"


def test_non_numeric_rescale_is_unsupported(tmp_path):
    path = write_dicom(tmp_path / "bad.dcm", ramp(0, 99), rescale=(2, 0))
    data = path.read_bytes()
    slope = b"\x28\x00\x53\x10DS\x04\x002.0 "  # (0028,1053) DS, length 4, "2.0 "
    assert slope in data
    path.write_bytes(data.replace(slope, slope[:-4] + b"two "))
    assert reason(load_dicom, path) == "unsupported"


def test_deflated_file_is_unsupported():
    assert reason(read_dicom_header, pydicom_file("image_dfl.dcm")) == "unsupported"


# --- no patient identifier in messages or logs ------------------------------------------------

PHI = {"patient_name": "Doe^Jane", "patient_id": "PID-98765", "birth_date": "19700101"}


def no_dicm_marker(source: Path, dest: Path) -> Path:
    data = bytearray(source.read_bytes())
    data[128:132] = b"XXXX"
    dest.write_bytes(data)
    return dest


def failing_files(tmp_path: Path):
    """(file, function that fails on it) for each way a file can be refused."""
    pixels = np.random.default_rng(0).integers(0, 4096, (128, 128), dtype=np.uint16)  # compresses poorly
    ok = write_dicom(tmp_path / "ok.dcm", pixels, **PHI)
    lateral = write_dicom(tmp_path / "lat.dcm", pixels, view_position="LL", **PHI)
    ct = write_dicom(tmp_path / "ct.dcm", pixels, modality="CT", **PHI)
    j2k = write_dicom(tmp_path / "j2k.dcm", pixels, transfer_syntax=JPEG2000Lossless, **PHI)
    screen = lambda path: screen_radiograph(read_dicom_header(path))  # noqa: E731
    return [
        (write_dicom(tmp_path / "multi.dcm", np.stack([pixels] * 2), **PHI), load_dicom),
        (without_pixel_data(write_dicom(tmp_path / "none.dcm", pixels, **PHI)), load_dicom),
        (truncated(ok, tmp_path / "half.dcm"), load_dicom),
        (truncated(j2k, tmp_path / "half_j2k.dcm"), load_dicom),
        (truncated(ok, tmp_path / "cut.dcm", ok.read_bytes().find(b"Doe^Jane") + 6), load_dicom),
        (no_dicm_marker(ok, tmp_path / "nomarker.dcm"), load_dicom),
        (lateral, screen),
        (ct, screen),
    ]


def test_no_patient_identifier_reaches_messages_or_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    skips, reasons = SkipLog(), set()
    for path, call in failing_files(tmp_path):
        with pytest.raises(UnusableImage) as info:
            call(path)
        reasons.add(info.value.reason)
        skips.skip_error(str(path), info.value)
        text = "".join(traceback.format_exception(info.value)) + repr(info.value)
        for value in PHI.values():
            assert value not in text, (path.name, text)
    assert reasons == {"multi-frame", "no pixel data", "undecodable", "not DICOM", "lateral view", "not a radiograph"}
    for value in PHI.values():
        assert value not in caplog.text
