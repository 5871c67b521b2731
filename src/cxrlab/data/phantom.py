"""Synthetic chest radiograph phantom: the embedded default dataset.

Each image is drawn procedurally: air, body and soft tissue, two lung fields with vascular
texture, ribs, clavicles, spine and mediastinum, the heart shadow and diaphragm domes, then
exposure, contrast and quantum noise. Anatomy is drawn once per patient (several images per
patient differ in position, rotation, inspiration and exposure), so patient-grouped splits
matter exactly as they do for real data.

Classes, as in Kermany et al. (the Kaggle "chest-xray-pneumonia" dataset):
- normal;
- bacterial pneumonia: focal, lobar consolidation in one lung (sometimes two foci);
- viral pneumonia: diffuse, bilateral, interstitial (reticular) opacity.
Every image comes with its lesion mask (empty for normal images).

The dataset is written in the Kaggle layout exactly (``chest_xray/{train,val,test}/{NORMAL,
PNEUMONIA}/`` with names like ``person12_bacteria_47.jpeg``, ``person3_virus_9.jpeg`` and
``IM-0117-0001.jpeg``), so the reader of the real dataset serves the phantom too.

Anatomy is drawn on a coarse grid (``WORK`` pixels wide) and resized to the output size, where
fine noise is added: that is what keeps generation of 1,500+ images near 1,000 px under a minute.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

WORK = 256  # width of the coarse grid that anatomy is drawn on
PHANTOM_VERSION = 2  # bump when the drawing changes: cached datasets are then regenerated
FINDINGS = ("normal", "bacteria", "virus")


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate. The defaults give ~1,600 images, Kaggle's class mix and split shape."""

    num_patients: int = 800
    seed: int = 0
    # per patient, near Kaggle's mix (27% normal images, pneumonia 2/3 bacterial); the default
    # draw gives 505 normal images of 1,585 (32%), 671 bacterial, 409 viral (docs/phantom.md)
    finding_probs: tuple[float, float, float] = (0.34, 0.43, 0.23)
    images_per_patient: tuple[int, int] = (1, 3)  # inclusive range, uniform
    width_range: tuple[int, int] = (700, 1500)
    aspect_range: tuple[float, float] = (0.75, 1.25)  # height / width
    test_fraction: float = 0.15  # of patients, for the official test folder
    val_images_per_class: int = 8  # Kaggle's official val folder has 8 + 8 images
    jpeg_quality: int = 90
    # Lesion visibility (fraction of the local lung-to-tissue contrast); lower is harder.
    lesion_strength: tuple[float, float] = (0.2, 0.65)
    workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))

    def fingerprint(self) -> dict:
        d = asdict(self)
        d.pop("workers")
        d["version"] = PHANTOM_VERSION
        return json.loads(json.dumps(d))  # tuples as lists, as read back from phantom.json

    @classmethod
    def read(cls, root: str | Path) -> PhantomConfig:
        """The settings a generated phantom folder was drawn with (its ``phantom.json``)."""
        saved = json.loads((Path(root) / "phantom.json").read_text())
        names = {f.name for f in fields(cls)} - {"workers"}
        return cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in names}
        )


@dataclass
class PatientAnatomy:
    """Per-patient constants: everything that must stay the same across a patient's images."""

    finding: str
    thorax_w: float  # fraction of image width
    lung_h: float  # fraction of image height
    heart_w: float
    heart_h: float
    rib_spacing: float
    rib_phase: float
    lung_texture_seed: int
    lesion_seed: int
    lesion_strength: float
    tissue: float  # soft tissue density
    aspect: float
    breast_shadow: float  # class-independent lower-zone soft-tissue density (0: none)
    hilar: float  # prominence of hilar vessels, class-independent


# --------------------------------------------------------------------------------------------
# Drawing helpers (coarse grid, float32 images in [0, 1] where 1 is most attenuating/bright)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, scaled to unit standard deviation."""
    n = rng.standard_normal((h, w), dtype=np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma)
    return n / (n.std() + 1e-6)


def _lung_polygon(cx: float, top: float, bottom: float, half_w: float, side: int) -> np.ndarray:
    """A lung outline: narrow apex, convex lateral wall, flatter medial border, domed base.

    ``side`` is -1 for the lung on the image's left (patient's right) and +1 for the other.
    """
    pts = []
    n = 40
    height = bottom - top
    # lateral wall, apex to costophrenic angle
    for i in range(n + 1):
        t = i / n
        y = top + t * height
        width = half_w * math.sin(min(1.0, 0.08 + t * 1.3) * math.pi / 2) ** 0.6
        pts.append((cx + side * width, y))
    # base (diaphragm dome): from costophrenic angle to the medial side, rising in the middle
    for i in range(1, n):
        t = i / n
        x = cx + side * half_w * (1 - 2 * t) * 0.95
        y = bottom - 0.10 * height * math.sin(t * math.pi)
        pts.append((x, y))
    # medial border, back up to the apex
    for i in range(n + 1):
        t = 1 - i / n
        y = top + t * height * 0.92
        width = half_w * (0.25 + 0.55 * t)
        pts.append((cx - side * width * 0.8, y))
    return np.array(pts, dtype=np.float32)


def _draw_patient_base(
    anat: PatientAnatomy, h: int, w: int, rng: np.random.Generator, inspiration: float
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Body, lungs, mediastinum, heart, ribs, clavicles. Returns (image, lung mask, lungs)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = w / 2

    img = np.full((h, w), 0.04, np.float32)  # air
    # torso: a wide super-ellipse, thicker (brighter) towards the middle
    tw, th = anat.thorax_w * w / 2, 0.62 * h
    r = ((np.abs(xx - cx) / tw) ** 3 + (np.abs(yy - 0.62 * h) / th) ** 3) ** (1 / 3)
    body = np.clip((1.0 - r) * 6, 0, 1)
    img += body * anat.tissue * (0.75 + 0.25 * np.clip(1 - np.abs(xx - cx) / tw, 0, 1))
    # shoulders
    for s in (-1, 1):
        sh = ((xx - (cx + s * 0.42 * w)) / (0.16 * w)) ** 2 + ((yy - 0.10 * h) / (0.10 * h)) ** 2
        img += np.clip(1 - sh, 0, 1) * 0.25 * anat.tissue

    # lungs
    top = 0.09 * h
    bottom = top + anat.lung_h * h * inspiration
    lung_mask = np.zeros((h, w), np.uint8)
    lungs = []
    for side, offset, width_scale in ((-1, 0.19, 1.0), (1, 0.19, 0.92)):
        lung_cx = cx + side * offset * w * anat.thorax_w / 0.8
        lung_bottom = bottom - (0.03 * h if side == -1 else 0.0)  # right hemidiaphragm higher
        poly = _lung_polygon(lung_cx, top, lung_bottom, 0.17 * w * width_scale, side)
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [np.round(poly).astype(np.int32)], 1)
        lungs.append(m)
        lung_mask |= m
    lung_soft = cv2.GaussianBlur(lung_mask.astype(np.float32), (0, 0), 2.0)
    img -= lung_soft * anat.tissue * 0.78

    # vascular markings: smooth branching-looking texture, denser towards the hila
    trng = np.random.default_rng(anat.lung_texture_seed)
    tex = np.abs(_smooth_noise(trng, h, w, 1.2)) * 0.5 + _smooth_noise(trng, h, w, 3.0) * 0.3
    hilum = np.exp(-(((np.abs(xx - cx) - 0.10 * w) / (0.12 * w)) ** 2)) * np.exp(
        -(((yy - 0.42 * h) / (0.2 * h)) ** 2)
    )
    img += lung_soft * tex * (0.025 + anat.hilar * hilum)

    # breast / pectoral soft-tissue shadows over the lower zones: a normal finding that raises
    # lower-lung density as a lesion would, so brightness alone cannot tell the classes apart
    if anat.breast_shadow > 0:
        for s in (-1, 1):
            bx, by = cx + s * 0.2 * w, top + anat.lung_h * h * inspiration * 0.85
            e = ((xx - bx) / (0.2 * w)) ** 2 + ((yy - by) / (0.16 * h)) ** 2
            img += np.clip(1 - e, 0, 1) ** 0.5 * anat.breast_shadow * anat.tissue * 0.5

    # mediastinum and spine
    med = np.exp(-(((xx - cx) / (0.065 * w)) ** 4)) * np.clip((yy - 0.05 * h) / (0.1 * h), 0, 1)
    img = np.maximum(img, med * (anat.tissue * 0.95))
    spine = np.exp(-(((xx - cx) / (0.035 * w)) ** 6))
    vert = 0.5 + 0.5 * np.cos(2 * np.pi * yy / (0.055 * h))
    img += spine * (0.08 + 0.04 * vert)

    # heart: bulges to the image's right (patient's left)
    hc_x, hc_y = cx + 0.05 * w, bottom - 0.17 * h
    heart = ((xx - hc_x) / (anat.heart_w * w)) ** 2 + ((yy - hc_y) / (anat.heart_h * h)) ** 2
    heart = np.clip((1 - heart) * 8, 0, 1)
    img = np.maximum(img, heart * anat.tissue * 0.92 + img * (1 - heart))

    # diaphragm / abdomen below the lungs stays soft tissue (already); liver slightly denser
    liver = np.clip((yy - bottom) / (0.06 * h), 0, 1) * np.clip(1 - (xx - cx) / (0.3 * w), 0, 1)
    img += liver * body * 0.05

    # ribs: posterior arcs across both hemithoraces
    ribs = np.zeros((h, w), np.float32)
    n_ribs = 10
    for i in range(n_ribs):
        y0 = top - 0.02 * h + (i + anat.rib_phase) * anat.rib_spacing * h * inspiration
        for s in (-1, 1):
            # posterior rib: leaves the spine level, curves down towards the lateral wall
            center = (int(cx), int(y0 + 0.10 * h))
            axes = (int(0.36 * w * anat.thorax_w / 0.8), int(0.10 * h))
            start, end = (270, 360) if s == 1 else (180, 270)
            cv2.ellipse(ribs, center, axes, 0, start, end, 1.0, max(1, int(0.014 * h)))
    ribs = cv2.GaussianBlur(ribs, (0, 0), 1.0)
    img += ribs * body * 0.08
    # clavicles
    clav = np.zeros((h, w), np.float32)
    for s in (-1, 1):
        p1 = (int(cx + s * 0.04 * w), int(0.16 * h))
        p2 = (int(cx + s * 0.33 * w), int(0.10 * h))
        cv2.line(clav, p1, p2, 1.0, max(1, int(0.018 * h)))
    img += cv2.GaussianBlur(clav, (0, 0), 1.5) * 0.12
    return img, lung_mask, lungs


def _draw_lesion(
    anat: PatientAnatomy,
    img: np.ndarray,
    lung_mask: np.ndarray,
    lungs: list[np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Add the patient's pathology; return (image, lesion mask as uint8 0/1)."""
    h, w = img.shape
    mask = np.zeros((h, w), np.uint8)
    if anat.finding == "normal":
        return img, mask
    lrng = np.random.default_rng(anat.lesion_seed)
    # Opacities raise lung density towards soft tissue: strength is a fraction of that gap.
    gap = anat.tissue * 0.78
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if anat.finding == "bacteria":
        opacity = np.zeros((h, w), np.float32)
        n_foci = 1 if lrng.random() < 0.8 else 2
        for _ in range(n_foci):
            lung = lungs[lrng.integers(0, 2)]
            ys, xs = np.nonzero(lung)
            # lobar: lower and middle zones more often than apices
            lower = ys > np.percentile(ys, 35)
            k = lrng.integers(0, lower.sum())
            cy, cxx = ys[lower][k], xs[lower][k]
            ry, rx = lrng.uniform(0.06, 0.14) * h, lrng.uniform(0.05, 0.11) * w
            ang = lrng.uniform(0, np.pi)
            dx, dy = xx - cxx, yy - cy
            u = (dx * np.cos(ang) + dy * np.sin(ang)) / rx
            v = (-dx * np.sin(ang) + dy * np.cos(ang)) / ry
            blob = np.clip(1.2 - np.sqrt(u**2 + v**2), 0, 1)
            # irregular margin and air bronchograms
            blob *= np.clip(1 + 0.45 * _smooth_noise(lrng, h, w, 3.0), 0, 1.6)
            opacity = np.maximum(opacity, np.clip(blob * 1.6, 0, 1) * lung)
        opacity = cv2.GaussianBlur(opacity, (0, 0), 1.5)
    else:  # virus: bilateral, diffuse, reticular, perihilar/lower predominance
        ret = np.abs(_smooth_noise(lrng, h, w, 1.0))
        ret = np.clip(ret - 0.6, 0, None) * 1.6
        haze = np.clip(0.5 + 0.5 * _smooth_noise(lrng, h, w, 8.0), 0, 1)
        zone = np.clip((yy - 0.25 * h) / (0.45 * h), 0, 1) * 0.7 + 0.3
        opacity = (0.55 * ret + 0.45 * haze) * zone * lung_mask
        opacity = cv2.GaussianBlur(opacity, (0, 0), 0.8)
    img = img + opacity * gap * anat.lesion_strength
    mask = (opacity * anat.lesion_strength > 0.12).astype(np.uint8)
    return img, mask


def _render_image(
    anat: PatientAnatomy, image_seed: int, out_w: int
) -> tuple[np.ndarray, np.ndarray]:
    """One radiograph of a patient, as uint8 (H, W), and its lesion mask at the same size."""
    rng = np.random.default_rng(image_seed)
    out_h = int(round(out_w * anat.aspect))
    h, w = int(round(WORK * anat.aspect)), WORK
    inspiration = rng.uniform(0.92, 1.05)
    img, lung_mask, lungs = _draw_patient_base(anat, h, w, rng, inspiration)
    img, lesion = _draw_lesion(anat, img, lung_mask, lungs, rng)

    # patient positioning: small rotation, shift, scale
    ang = rng.normal(0, 3.0)
    scale = rng.uniform(0.92, 1.08)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), ang, scale)
    m[:, 2] += rng.normal(0, 0.025, 2) * (w, h)
    img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.04)
    lesion = cv2.warpAffine(lesion, m, (w, h), flags=cv2.INTER_NEAREST)

    # exposure and display: gamma, contrast, brightness vary per image (pointwise, so done on
    # the coarse grid: the same result as at full size, at a fraction of the cost)
    gamma = rng.uniform(0.75, 1.35)
    img = np.clip(img, 0, 1) ** gamma
    contrast, bright = rng.uniform(0.8, 1.2), rng.uniform(-0.08, 0.08)
    img = (img - 0.5) * contrast + 0.5 + bright
    # to output size, then fine-grained quantum noise at full resolution
    img = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_CUBIC)
    lesion = cv2.resize(lesion, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    noise = rng.standard_normal((out_h, out_w), dtype=np.float32)
    img += noise * np.float32(rng.uniform(0.01, 0.03))
    out = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    # a burnt-in side marker at a corner, as on many real radiographs
    if rng.random() < 0.3:
        cv2.putText(
            out,
            "R",
            (int(0.05 * out_w), int(0.08 * out_h)),
            cv2.FONT_HERSHEY_SIMPLEX,
            out_w / 600,
            255,
            max(1, out_w // 300),
        )
    return out, lesion


def sample_anatomy(rng: np.random.Generator, finding: str, cfg: PhantomConfig) -> PatientAnatomy:
    return PatientAnatomy(
        finding=finding,
        thorax_w=rng.uniform(0.72, 0.88),
        lung_h=rng.uniform(0.55, 0.65),
        heart_w=rng.uniform(0.11, 0.16),
        heart_h=rng.uniform(0.09, 0.13),
        rib_spacing=rng.uniform(0.052, 0.062),
        rib_phase=rng.uniform(0, 1),
        lung_texture_seed=int(rng.integers(2**31)),
        lesion_seed=int(rng.integers(2**31)),
        lesion_strength=float(rng.uniform(*cfg.lesion_strength)),
        tissue=rng.uniform(0.55, 0.75),
        aspect=rng.uniform(*cfg.aspect_range),
        breast_shadow=float(rng.uniform(0.2, 0.7)) if rng.random() < 0.5 else 0.0,
        hilar=float(rng.uniform(0.03, 0.09)),
    )


def render(anat: PatientAnatomy, image_seed: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Public entry for one image (used by tests and previews)."""
    return _render_image(anat, image_seed, width)


# --------------------------------------------------------------------------------------------
# The dataset on disk (Kaggle layout)


@dataclass
class _Job:
    path: str
    mask_path: str
    anat: PatientAnatomy
    seed: int
    width: int
    quality: int


def _write_one(job: _Job) -> None:
    img, mask = _render_image(job.anat, job.seed, job.width)
    ok, buf = cv2.imencode(".jpeg", img, [cv2.IMWRITE_JPEG_QUALITY, job.quality])
    if not ok:  # pragma: no cover - cv2 encodes any uint8 image
        raise RuntimeError(f"could not encode {job.path}")
    Path(job.path).write_bytes(buf.tobytes())
    ok, buf = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    Path(job.mask_path).write_bytes(buf.tobytes())


def plan(cfg: PhantomConfig) -> list[_Job]:
    """Decide every image (patient, class, split, file name, seed) before drawing any."""
    rng = np.random.default_rng(cfg.seed)
    findings = rng.choice(len(FINDINGS), size=cfg.num_patients, p=np.array(cfg.finding_probs))
    patients = []
    for pid, f in enumerate(findings):
        anat = sample_anatomy(rng, FINDINGS[f], cfg)
        n = int(rng.integers(cfg.images_per_patient[0], cfg.images_per_patient[1] + 1))
        patients.append((pid, anat, n))
    # Official split by patient: a test fraction, a tiny val (as Kaggle's), the rest train.
    order = rng.permutation(len(patients))
    n_test = int(round(cfg.test_fraction * len(patients)))
    split_of = {}
    for rank, idx in enumerate(order):
        split_of[patients[idx][0]] = "test" if rank < n_test else "train"
    val_left = {"normal": cfg.val_images_per_class, "pneumonia": cfg.val_images_per_class}
    for idx in order[n_test:][::-1]:
        pid, anat, n = patients[idx]
        key = "normal" if anat.finding == "normal" else "pneumonia"
        if n <= val_left[key]:
            split_of[pid] = "val"
            val_left[key] -= n
        if not any(val_left.values()):
            break

    jobs = []
    image_counter = 0
    for pid, anat, n in patients:
        folder = "NORMAL" if anat.finding == "normal" else "PNEUMONIA"
        for k in range(n):
            image_counter += 1
            if anat.finding == "normal":
                name = f"IM-{pid:04d}-{k + 1:04d}.jpeg"
            else:
                name = f"person{pid}_{anat.finding}_{image_counter}.jpeg"
            width = int(rng.integers(cfg.width_range[0], cfg.width_range[1] + 1))
            rel = f"chest_xray/{split_of[pid]}/{folder}/{name}"
            jobs.append(
                _Job(
                    rel,
                    f"masks/{split_of[pid]}/{folder}/{Path(name).stem}.png",
                    anat,
                    int(rng.integers(2**31)),
                    width,
                    cfg.jpeg_quality,
                )
            )
    return jobs


def generate(root: str | Path, cfg: PhantomConfig | None = None, progress: bool = True) -> Path:
    """Write the phantom dataset under ``root`` (idempotent: reuses a complete one).

    A ``phantom.json`` marker is written last, so an interrupted generation is redone.
    Returns the folder that holds ``chest_xray/``.
    """
    from filelock import FileLock

    cfg = cfg or PhantomConfig()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "phantom.json"
    with FileLock(str(root / ".phantom.lock")):
        if marker.exists() and json.loads(marker.read_text()) == cfg.fingerprint():
            return root
        if marker.exists():
            log.info("Phantom at %s was made with other settings: regenerating", root)
            marker.unlink()
        for sub in ("chest_xray", "masks"):  # never mix files of two settings
            shutil.rmtree(root / sub, ignore_errors=True)
        jobs = plan(cfg)
        for sub in {Path(j.path).parent for j in jobs} | {Path(j.mask_path).parent for j in jobs}:
            (root / sub).mkdir(parents=True, exist_ok=True)
        for j in jobs:
            j.path, j.mask_path = str(root / j.path), str(root / j.mask_path)
        log.info("Generating %d phantom radiographs under %s", len(jobs), root)
        from cxrlab.utils.progress import track

        if cfg.workers > 1:
            with ProcessPoolExecutor(cfg.workers) as pool:
                it = pool.map(_write_one, jobs, chunksize=8)
                for _ in track(it, total=len(jobs), description="phantom", enabled=progress):
                    pass
        else:
            for j in track(jobs, total=len(jobs), description="phantom", enabled=progress):
                _write_one(j)
        marker.write_text(json.dumps(cfg.fingerprint()))
    return root


def preview(out: str | Path, seed: int = 0, per_class: int = 3, tile: int = 256) -> Path:
    """An image grid (PNG or JPEG by suffix): one row per class, lesion masks outlined in red, class names written in."""
    cfg = PhantomConfig(num_patients=60, seed=seed)
    rows = []
    for finding in ("bacteria", "virus", "normal"):
        tiles = []
        for job in [j for j in plan(cfg) if j.anat.finding == finding][:per_class]:
            img, mask = _render_image(job.anat, job.seed, 512)
            h = int(round(tile * img.shape[0] / img.shape[1]))
            small = cv2.resize(img, (tile, h), interpolation=cv2.INTER_AREA)
            m = cv2.resize(mask, (tile, h), interpolation=cv2.INTER_NEAREST)
            canvas = np.zeros((tile, tile), np.uint8)
            canvas[: min(h, tile)] = small[:tile]
            color = cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)
            contours, _ = cv2.findContours(m[:tile], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(color, contours, -1, (0, 0, 255), 1)
            cv2.putText(
                color, finding, (6, tile - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1
            )
            tiles.append(color)
        rows.append(np.hstack(tiles))
    out = Path(out)
    cv2.imwrite(str(out), np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 85])  # by suffix
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m cxrlab.data.phantom OUT_DIR [--patients N] [--seed S]`` or ``--preview PNG``."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("root", nargs="?", help="folder to write the dataset to")
    p.add_argument("--patients", type=int, default=PhantomConfig.num_patients)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preview", help="write an image grid of samples with lesion outlines instead")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.preview:
        preview(args.preview, seed=args.seed)
    elif args.root:
        generate(args.root, PhantomConfig(num_patients=args.patients, seed=args.seed))
    else:
        p.error("give a folder, or --preview PNG")


if __name__ == "__main__":
    main()
