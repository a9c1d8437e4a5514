import numpy as np
import pytest
from PIL import Image

from src.data import images
from src.data.dicom import LUMA, load_dicom
from src.data.images import IMAGE_SUFFIXES, is_dicom, load_image
from src.data.skips import UnusableImage
from tests.data.dicom_factory import write_dicom

RNG = np.random.default_rng(0)


def unreadable(path) -> str:
    with pytest.raises(UnusableImage) as info:
        load_image(path)
    return info.value.reason


def test_image_suffixes():
    assert set(IMAGE_SUFFIXES) == {".dcm", ".dicom", ".png", ".jpg", ".jpeg"}


def test_is_dicom_by_suffix_or_by_marker(tmp_path):
    pixels = np.zeros((4, 4), np.uint16)
    uid_named = write_dicom(tmp_path / "1.2.840.113619.2.55.3.7", pixels)  # PACS export
    bare = write_dicom(tmp_path / "IM0001", pixels)
    text = tmp_path / "README"
    text.write_text("x" * 200)
    assert is_dicom(tmp_path / "a.dcm") and is_dicom(tmp_path / "B.DICOM")  # suffix only: not opened
    assert is_dicom(uid_named) and is_dicom(bare)
    assert not is_dicom(text) and not is_dicom(tmp_path / "a.png")
    assert not is_dicom(tmp_path / "missing")


def test_dicom_goes_through_load_dicom(tmp_path):
    path = write_dicom(tmp_path / "IM0001", RNG.integers(0, 4096, (16, 16), dtype=np.uint16), bits_stored=12)
    assert np.array_equal(load_image(path), load_dicom(path))


def test_16_bit_png_is_scaled_by_its_depth_not_stretched(tmp_path):
    pixels = RNG.integers(1000, 2000, (20, 30), dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.dtype == np.float32 and image.shape == (20, 30)
    np.testing.assert_allclose(image, pixels / 65535, rtol=1e-6)


def test_8_bit_gray_png(tmp_path):
    pixels = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_allclose(load_image(tmp_path / "a.png"), pixels / 255, rtol=1e-6)


def test_rgb_jpeg_becomes_luminance(tmp_path):
    rgb = np.empty((32, 32, 3), np.uint8)
    rgb[:] = (200, 100, 50)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    image = load_image(tmp_path / "a.jpg")
    assert image.dtype == np.float32 and image.shape == (32, 32)
    np.testing.assert_allclose(image, rgb @ LUMA / 255, atol=2 / 255)


def test_rgba_png_drops_alpha_and_palette_png_maps_its_colours(tmp_path):
    rgb = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (16, 16, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], axis=2)).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).quantize(colors=16).save(tmp_path / "palette.png")
    expected = rgb @ LUMA / 255
    np.testing.assert_allclose(load_image(tmp_path / "rgba.png"), expected, atol=1 / 255)
    palette = Image.open(tmp_path / "palette.png")
    assert palette.mode == "P"
    np.testing.assert_allclose(
        load_image(tmp_path / "palette.png"), np.asarray(palette.convert("RGB")) @ LUMA / 255, atol=1 / 255
    )


def test_unreadable_pictures(tmp_path):
    (tmp_path / "noise.png").write_bytes(RNG.bytes(2000))
    Image.fromarray(RNG.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    assert unreadable(tmp_path / "noise.png") == "unreadable image"
    assert unreadable(tmp_path / "half.png") == "unreadable image"


def test_medmnist_members_are_loaded_once_per_split(tmp_path, monkeypatch):
    gray = RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    colour = RNG.integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    np.savez(tmp_path / "pneumoniamnist.npz", train_images=gray, train_labels=np.zeros((5, 1)))
    np.savez(tmp_path / "dermamnist.npz", val_images=colour, val_labels=np.zeros((3, 1)))
    loads = []
    real_load = np.load

    def counting_load(file, *args, **kwargs):
        loads.append(file)
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(np, "load", counting_load)
    images._medmnist_images.cache_clear()

    first = load_image(f"{tmp_path}/pneumoniamnist.npz::train:2")
    assert first.dtype == np.float32 and first.shape == (28, 28)
    np.testing.assert_allclose(first, gray[2] / 255, rtol=1e-6)
    np.testing.assert_allclose(load_image(f"{tmp_path}/pneumoniamnist.npz::train:4"), gray[4] / 255, rtol=1e-6)
    np.testing.assert_allclose(
        load_image(f"{tmp_path}/dermamnist.npz::val:1"), colour[1] @ LUMA / 255, rtol=1e-6
    )
    assert len(loads) == 2  # one np.load per file and split, not one per image


@pytest.mark.parametrize("member", ["train:99", "test:0", "train", "train:x"])
def test_missing_medmnist_member_is_unreadable(tmp_path, member):
    np.savez(tmp_path / "m.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    assert unreadable(f"{tmp_path}/m.npz::{member}") == "unreadable image"


def test_missing_medmnist_file_is_unreadable(tmp_path):
    assert unreadable(f"{tmp_path}/absent.npz::train:0") == "unreadable image"
