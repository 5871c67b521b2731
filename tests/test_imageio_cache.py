import json

import cv2
import numpy as np
import pytest

from cxrlab.data.cache import build_cache
from cxrlab.data.imageio import UnreadableImageError, read_image
from cxrlab.data.preprocess import PreprocessSpec, load_preprocessed, preprocess_array


def ramp(h=60, w=80, dtype=np.uint8):
    top = 255 if dtype == np.uint8 else 65535
    return np.tile(np.linspace(0, top, w), (h, 1)).astype(dtype)


def test_png_8_and_16_bit_gray_rgb_and_alpha_agree(tmp_path):
    g8 = ramp()
    cv2.imwrite(str(tmp_path / "g8.png"), g8)
    cv2.imwrite(str(tmp_path / "g16.png"), ramp(dtype=np.uint16))
    cv2.imwrite(str(tmp_path / "rgb.png"), np.dstack([g8] * 3))
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([g8] * 3 + [np.full_like(g8, 255)]))
    spec = PreprocessSpec(size=32)
    ref = load_preprocessed(tmp_path / "g8.png", spec)
    for name in ("g16.png", "rgb.png", "rgba.png"):
        out = load_preprocessed(tmp_path / name, spec)
        assert out.dtype == np.uint8 and out.shape == (32, 32)
        assert np.abs(out.astype(int) - ref).max() <= 1, name


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty"),
        (b"this is not an image", "not a decodable image"),
    ],
)
def test_unreadable_files_say_why(tmp_path, content, reason):
    p = tmp_path / "x.png"
    p.write_bytes(content)
    with pytest.raises(UnreadableImageError, match=reason) as e:
        read_image(p)
    assert str(p) in str(e.value)


def test_truncated_jpeg_is_unreadable_or_partial_never_a_crash(tmp_path):
    ok, buf = cv2.imencode(".jpg", ramp())
    p = tmp_path / "t.jpg"
    p.write_bytes(buf.tobytes()[:40])
    with pytest.raises(UnreadableImageError):
        read_image(p)


def test_crop_and_pad_aspect():
    img = np.zeros((40, 80), np.uint8)
    img[:, 20:60] = 200  # the center square is bright
    crop = preprocess_array(img, 255.0, PreprocessSpec(size=20, aspect="crop"))
    pad = preprocess_array(img, 255.0, PreprocessSpec(size=20, aspect="pad"))
    assert crop.min() == 200
    assert pad[0].max() == 0 and pad[10, 10] == 200


def test_cache_is_reused_rebuilt_on_change_and_records_bad_files(tmp_path):
    files = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), ramp() // (i + 1))
        files.append(str(p))
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    files.append(str(bad))
    spec = PreprocessSpec(size=16)
    c1 = build_cache(files, spec, tmp_path / "cache", workers=1, progress=False)
    assert c1.images.shape == (6, 16, 16)
    assert list(c1.unreadable) == [str(bad)]
    np.testing.assert_array_equal(c1.images[2], load_preprocessed(files[2], spec))
    stamp = (c1.folder / "meta.json").stat().st_mtime_ns
    c2 = build_cache(files, spec, tmp_path / "cache", workers=1, progress=False)
    assert c2.folder == c1.folder and (c2.folder / "meta.json").stat().st_mtime_ns == stamp
    c3 = build_cache(files, PreprocessSpec(size=24), tmp_path / "cache", workers=1, progress=False)
    assert c3.folder != c1.folder and c3.images.shape[1:] == (24, 24)


def test_interrupted_build_is_redone(tmp_path):
    p = tmp_path / "a.png"
    cv2.imwrite(str(p), ramp())
    spec = PreprocessSpec(size=16)
    c = build_cache([str(p)], spec, tmp_path / "cache", workers=1, progress=False)
    # simulate a crash: the finished folder vanishes, a half-written one is left behind
    half = c.folder.with_name(c.folder.name + ".building")
    c.folder.rename(half)
    (half / "meta.json").unlink()
    c2 = build_cache([str(p)], spec, tmp_path / "cache", workers=1, progress=False)
    assert json.loads((c2.folder / "meta.json").read_text())["paths"] == [str(p)]
    assert not half.exists()
    assert c2.images[0].max() > 0
