"""DICOM reading: transfer syntaxes, photometric interpretations, bit depths, VOI and rescale, and
agreement with torchxrayvision's ``read_xray_dcm`` on the same files."""

import warnings

import numpy as np
import pytest

from cxrlab.data.dicomwrite import write_dicom
from cxrlab.data.imageio import UnreadableImageError, read_header, read_image
from cxrlab.data.preprocess import PreprocessSpec, load_preprocessed

xrv = pytest.importorskip("torchxrayvision")


def phantom_pixels(bits: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A ramp with noise over the whole stored range: every bit matters."""
    rng = np.random.default_rng(bits)
    top = 2**bits - 1
    ramp = np.tile(np.linspace(0, top, w), (h, 1)) + rng.normal(0, top / 50, (h, w))
    return np.clip(ramp, 0, top).astype(np.uint8 if bits <= 8 else np.uint16)


def xrv_read(path, voi_lut=False) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its MONOCHROME1 notice
        return xrv.utils.read_xray_dcm(str(path), voi_lut=voi_lut)


@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpegls", "jpeg2000"])
@pytest.mark.parametrize("bits", [8, 12, 16])
def test_lossless_syntaxes_read_the_stored_values(tmp_path, syntax, bits):
    px = phantom_pixels(bits)
    p = write_dicom(tmp_path / "x.dcm", px, bits_stored=bits, syntax=syntax)
    arr, full = read_image(p)
    assert full == 1.0 and arr.shape == px.shape
    np.testing.assert_allclose(arr * (2**bits - 1), px, atol=1e-2)
    # the same numbers torchxrayvision computes ([-1024, 1024] over the stored bit range)
    np.testing.assert_allclose(arr * 2048 - 1024, xrv_read(p), atol=1e-2)


def test_jpeg_baseline_is_decoded_within_its_loss(tmp_path):
    px = phantom_pixels(8)
    p = write_dicom(tmp_path / "x.dcm", px, syntax="jpeg")
    arr, _ = read_image(p)
    assert np.abs(arr * 255 - px).mean() < 3
    np.testing.assert_allclose(arr * 2048 - 1024, xrv_read(p), atol=1e-2)


def test_monochrome1_is_inverted_like_torchxrayvision(tmp_path):
    px = phantom_pixels(12)
    m2 = write_dicom(tmp_path / "m2.dcm", px, bits_stored=12)
    m1 = write_dicom(tmp_path / "m1.dcm", px, bits_stored=12, photometric="MONOCHROME1")
    a2, _ = read_image(m2)
    a1, _ = read_image(m1)
    np.testing.assert_allclose(a1, 1.0 - a2, atol=1e-6)
    np.testing.assert_allclose(a1 * 2048 - 1024, xrv_read(m1), atol=1e-2)


def test_window_is_applied_like_torchxrayvision_voi_lut(tmp_path):
    px = phantom_pixels(12)
    p = write_dicom(tmp_path / "w.dcm", px, bits_stored=12, window=(1500, 1000))
    arr, _ = read_image(p)
    # outside the window saturates: the left (dark) columns are 0, the right ones 1
    assert arr[:, :5].max() == 0.0 and arr[:, -5:].min() == 1.0
    np.testing.assert_allclose(arr * 2048 - 1024, xrv_read(p, voi_lut=True), atol=0.5)


def test_rescale_keeps_the_picture(tmp_path):
    px = phantom_pixels(12)
    plain, _ = read_image(write_dicom(tmp_path / "a.dcm", px, bits_stored=12))
    rescaled, _ = read_image(
        write_dicom(tmp_path / "b.dcm", px, bits_stored=12, rescale=(2.0, -1024.0))
    )
    np.testing.assert_allclose(rescaled, plain, atol=1e-5)


def test_minmax_scale_for_headers_that_claim_too_many_bits(tmp_path):
    px = (phantom_pixels(10)).astype(np.uint16)  # 10 bits of content, header says 16
    p = write_dicom(tmp_path / "x.dcm", px, bits_stored=16)
    full, _ = read_image(p)
    stretched, _ = read_image(p, dicom_scale="minmax")
    assert full.max() < 0.02  # what the header promises: a nearly black picture
    assert stretched.min() == 0.0 and stretched.max() == 1.0
    big = load_preprocessed(p, PreprocessSpec(size=32, dicom_scale="minmax"))
    assert big.max() > 200  # (center crop: the ramp ends are cut)
    with pytest.raises(ValueError, match="dicom_scale"):
        PreprocessSpec(dicom_scale="auto")


def test_dicom_without_a_suffix_and_its_header(tmp_path):
    p = write_dicom(tmp_path / "1.2.3.4", phantom_pixels(12), bits_stored=12, view="AP")
    arr, _ = read_image(p)
    assert arr.shape == (48, 64)
    head = read_header(p)
    assert head["format"] == "DICOM" and head["bit_depth"] == 12 and head["view"] == "AP"


def test_bad_dicoms_say_why(tmp_path):
    no_pixels = write_dicom(tmp_path / "np.dcm", phantom_pixels(8), pixel_data=False)
    with pytest.raises(UnreadableImageError, match="no pixel data") as e:
        read_image(no_pixels)
    assert str(no_pixels) in str(e.value)
    rgb = write_dicom(tmp_path / "rgb.dcm", phantom_pixels(8), photometric="PALETTE COLOR")
    with pytest.raises(UnreadableImageError, match="unsupported PhotometricInterpretation"):
        read_image(rgb)
    good = write_dicom(tmp_path / "ok.dcm", phantom_pixels(12), bits_stored=12, syntax="rle")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(good.read_bytes()[:-2000])
    with pytest.raises(UnreadableImageError, match="cut.dcm"):
        read_image(cut)


def test_a_real_chest_cr_matches_read_xray_dcm_with_voi_lut():
    """NEMA's RG1 (pydicom-data): a real PA chest CR, MONOCHROME1, 15 bits, with a window.
    cxrlab applies the window, so it equals read_xray_dcm(voi_lut=True), uncompressed and
    JPEG 2000 alike; xrv's default (voi_lut=False) ignores the window and differs."""
    from pydicom.data import get_testdata_file

    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        p = get_testdata_file(name)
        arr, _ = read_image(p)
        assert arr.shape == (1955, 1841)
        np.testing.assert_allclose(arr * 2048 - 1024, xrv_read(p, voi_lut=True), atol=1e-2)
        assert np.abs(arr * 2048 - 1024 - xrv_read(p)).max() > 100
