import re
from pathlib import Path

import cv2
import numpy as np

from cxrlab.data import phantom
from cxrlab.data.sources import kaggle_pneumonia

NAME = re.compile(r"^(IM-\d{4}-\d{4}|person\d+_(bacteria|virus)_\d+)\.jpeg$")


def test_layout_and_names(tiny_phantom):
    files = sorted((tiny_phantom / "chest_xray").rglob("*.jpeg"))
    assert files
    for f in files:
        split, folder = f.parts[-3], f.parts[-2]
        assert split in ("train", "val", "test") and folder in ("NORMAL", "PNEUMONIA")
        assert NAME.match(f.name), f.name
        assert (folder == "NORMAL") == f.name.startswith("IM-")


def test_deterministic_for_a_seed():
    cfg = phantom.PhantomConfig(num_patients=6, seed=11)
    a, b = phantom.plan(cfg), phantom.plan(cfg)
    assert [j.path for j in a] == [j.path for j in b]
    img1, m1 = phantom.render(a[0].anat, a[0].seed, 400)
    img2, m2 = phantom.render(b[0].anat, b[0].seed, 400)
    assert np.array_equal(img1, img2) and np.array_equal(m1, m2)
    other = phantom.plan(phantom.PhantomConfig(num_patients=6, seed=12))
    img3, _ = phantom.render(other[0].anat, other[0].seed, 400)
    assert img3.shape != img1.shape or not np.array_equal(img1, img3)


def test_generate_is_idempotent(tiny_phantom):
    marker = tiny_phantom / "phantom.json"
    before = marker.stat().st_mtime_ns
    cfg = phantom.PhantomConfig(num_patients=40, seed=3, width_range=(300, 420), workers=2)
    phantom.generate(tiny_phantom, cfg, progress=False)
    assert marker.stat().st_mtime_ns == before
    # the folder says what it was drawn with: the same plan, file for file
    read = phantom.PhantomConfig.read(tiny_phantom)
    assert read.fingerprint() == cfg.fingerprint()
    assert [j.path for j in phantom.plan(read)] == [j.path for j in phantom.plan(cfg)]


def test_class_mix_several_images_per_patient_and_sizes():
    cfg = phantom.PhantomConfig(num_patients=400, seed=0)
    jobs = phantom.plan(cfg)
    findings = np.array([j.anat.finding for j in jobs])
    share_normal = (findings == "normal").mean()
    assert 0.2 < share_normal < 0.45  # Kaggle is about 27% normal
    pneu = findings[findings != "normal"]
    assert 0.5 < (pneu == "bacteria").mean() < 0.8  # about 2/3 of pneumonia is bacterial
    per_patient = {}
    for j in jobs:
        per_patient.setdefault(id(j.anat), []).append(j)
    assert max(len(v) for v in per_patient.values()) >= 2
    widths = np.array([j.width for j in jobs])
    assert widths.min() >= 700 and widths.max() <= 1500 and widths.std() > 100
    aspects = np.array([j.anat.aspect for j in jobs])
    assert aspects.min() < 0.9 and aspects.max() > 1.1


def test_lesion_masks_follow_the_class(tiny_phantom):
    for f in sorted((tiny_phantom / "chest_xray").rglob("*.jpeg"))[:30]:
        rel = f.relative_to(tiny_phantom / "chest_xray")
        mask = cv2.imread(str(tiny_phantom / "masks" / rel.with_suffix(".png")), 0)
        img = cv2.imread(str(f), 0)
        assert mask.shape == img.shape
        if f.parent.name == "NORMAL":
            assert mask.sum() == 0
        else:
            assert mask.sum() > 0


def test_the_kaggle_reader_reads_it(tiny_phantom):
    df, classes = kaggle_pneumonia.index(tiny_phantom, "multiclass")
    assert classes == ["normal", "bacteria", "virus"]
    assert set(df["label"]) <= set(classes)
    assert df["patient_id"].nunique() <= 40
    # a patient's images all carry that patient's class
    assert (df.groupby("patient_id")["label"].nunique() == 1).all()
    assert all(Path(p).is_file() for p in df["path"])


def test_the_class_shares_in_the_docs_are_the_default_phantoms():
    """docs/phantom.md's counts are what the default phantom draws (its plan, no pixels)."""
    import re
    from collections import Counter

    doc = (Path(__file__).resolve().parents[1] / "docs" / "phantom.md").read_text()
    m = re.search(r"([\d,]+) images: (\d+) normal \((\d+)%\) and ([\d,]+) pneumonia, of which "
                  r"(\d+) bacterial \((\d+)%\) and (\d+) viral", doc)  # fmt: skip
    assert m, "docs/phantom.md no longer states the default phantom's class counts"
    total, normal, normal_pct, pneumonia, bacteria, bacteria_pct, virus = (
        int(g.replace(",", "")) for g in m.groups()
    )
    counts = Counter(job.anat.finding for job in phantom.plan(phantom.PhantomConfig()))
    assert (counts["normal"], counts["bacteria"], counts["virus"]) == (normal, bacteria, virus)
    assert sum(counts.values()) == total and bacteria + virus == pneumonia
    assert round(100 * normal / total) == normal_pct
    assert round(100 * bacteria / pneumonia) == bacteria_pct
