import pytest
import torch

from cxrlab.data.augment import AugmentConfig, BatchAugment
from cxrlab.data.augment_preview import preview

FULL = AugmentConfig(
    rotation=15,
    scaling=0.1,
    shear=5,
    translation=0.1,
    horizontal_flip=0.5,
    vertical_flip=0.5,
    crop_scale=0.8,
    brightness=0.1,
    contrast=0.2,
    gamma=0.2,
    noise=0.03,
)


def batch(n=8, size=48, dtype=torch.float32):
    torch.manual_seed(0)
    x = torch.rand(n, 1, size, size, dtype=dtype)
    return x


def test_all_zero_ranges_is_exactly_the_input():
    x = batch()
    assert torch.equal(BatchAugment(AugmentConfig())(x), x)


def test_each_sample_gets_its_own_parameters():
    x = batch(1).repeat(8, 1, 1, 1)  # eight copies of one image
    y = BatchAugment(FULL)(x)
    diffs = [(y[i] - y[j]).abs().mean().item() for i in range(8) for j in range(i + 1, 8)]
    assert min(diffs) > 1e-3  # no two copies came out the same


def test_range_shape_dtype_and_device_follow_the_input():
    for dtype in (torch.float32, torch.float64):
        x = batch(dtype=dtype)
        y = BatchAugment(FULL)(x)
        assert y.dtype == dtype and y.shape == x.shape and y.device == x.device
        assert y.min() >= 0 and y.max() <= 1


def test_reproducible_under_a_seed():
    x = batch()
    torch.manual_seed(7)
    a = BatchAugment(FULL)(x)
    torch.manual_seed(7)
    b = BatchAugment(FULL)(x)
    assert torch.equal(a, b)


def test_horizontal_flip_alone_mirrors_exactly_some_samples():
    x = batch(32)
    y = BatchAugment(AugmentConfig(horizontal_flip=0.5))(x)
    flipped = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(32)]
    same = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(32)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 4 < sum(flipped) < 28


def test_uint8_cpu_route_matches_the_float_route():
    """uint8 on CPU takes OpenCV warps + lookup tables: same parameters, same result."""
    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (8, 1, 64, 64), dtype=torch.uint8)
    assert torch.equal(BatchAugment(AugmentConfig())(x8), x8.float() / 255)
    no_noise = AugmentConfig(
        rotation=15,
        scaling=0.1,
        shear=5,
        translation=0.1,
        horizontal_flip=0.5,
        crop_scale=0.8,
        brightness=0.1,
        contrast=0.2,
        gamma=0.2,
    )
    aug = BatchAugment(no_noise)
    torch.manual_seed(3)
    via_float = aug(x8.float() / 255)
    torch.manual_seed(3)
    via_uint8 = aug(x8)
    assert via_uint8.dtype == torch.float32 and via_uint8.shape == x8.shape
    assert (via_float - via_uint8).abs().mean() < 0.005  # bilinear on uint8 vs float
    noisy = BatchAugment(AugmentConfig(noise=0.05))(x8[:1].repeat(4, 1, 1, 1))
    residual = noisy - x8[:1].float() / 255
    assert 0 < residual.std() < 0.06 and not torch.allclose(residual[0], residual[1])
    assert noisy.min() >= 0 and noisy.max() <= 1


def test_rejects_other_types_and_bad_values():
    with pytest.raises(TypeError):
        BatchAugment(FULL)(torch.zeros(1, 1, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="augment.rotation"):
        AugmentConfig(rotation=-1)
    with pytest.raises(ValueError, match="augment.horizontal_flip"):
        AugmentConfig(horizontal_flip=2)
    with pytest.raises(ValueError, match=r"augment.device='gpu'.*\['batch', 'cpu'\]"):
        AugmentConfig(device="gpu")
    # the earlier name of the batch route (it also ran on CPUs) still works
    assert AugmentConfig(device="gpu_batch").device == "batch"


@pytest.mark.gpu
def test_runs_on_the_gpu():
    x = batch().cuda().half()
    y = BatchAugment(FULL)(x)
    assert y.is_cuda and y.dtype == torch.float16


def test_preview_writes_a_grid(tmp_path):
    import cv2

    out = preview(str(tmp_path / "grid.png"), FULL, n=3, size=64)
    img = cv2.imread(out, 0)
    assert img.shape == (4 * 64, 4 * 64)


def test_albumentations_cpu_path_same_ranges():
    import numpy as np

    from cxrlab.data.augment import albumentations_pipeline

    img = (np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8)
    assert np.array_equal(albumentations_pipeline(AugmentConfig(), 48)(image=img)["image"], img)
    pipe = albumentations_pipeline(FULL, 48)
    outs = [pipe(image=img)["image"] for _ in range(4)]
    assert all(o.dtype == np.uint8 and o.shape == (48, 48) for o in outs)
    assert not np.array_equal(outs[0], outs[1])


def test_module_augments_training_batches_only_and_leaves_labels_alone():
    from types import SimpleNamespace

    from cxrlab.models.module import CXRClassifier

    m = CXRClassifier(
        "resnet18",
        ["a", "b"],
        [1, 1],
        {"size": 32},
        pretrained="false",
        augment={"rotation": 20, "noise": 0.1},
    )
    x = torch.randint(0, 255, (4, 1, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1, 1, 0])
    idx = torch.arange(4)
    m._trainer = SimpleNamespace(training=True)
    xa, ya, ia = m.on_after_batch_transfer((x, y, idx), 0)
    m._trainer = SimpleNamespace(training=False)
    xe, ye, _ = m.on_after_batch_transfer((x, y, idx), 0)
    assert torch.equal(ya, y) and torch.equal(ye, y) and torch.equal(ia, idx)
    plain = m.input_spec.normalize(x.float() / 255)
    assert torch.equal(xe, plain)  # validation/test: normalization only
    assert not torch.allclose(xa, plain)  # training: augmented
    cpu_side = CXRClassifier(
        "resnet18",
        ["a", "b"],
        [1, 1],
        {"size": 32},
        pretrained="false",
        augment={"device": "cpu", "rotation": 20},
    )
    cpu_side._trainer = SimpleNamespace(training=True)
    xc, _, _ = cpu_side.on_after_batch_transfer((x, y, idx), 0)
    assert torch.equal(xc, plain)  # the workers already augmented; nothing twice


def test_preview_command_composes_the_preset(tmp_path):
    """`python -m cxrlab.data.augment_preview --preview out.png --preset xray`, as the docs
    show it."""
    import cv2

    from cxrlab.data.augment_preview import main

    out = tmp_path / "xray.png"
    main(["--preview", str(out), "--preset", "xray"])
    assert cv2.imread(str(out), 0).shape == (4 * 192, 7 * 192)
