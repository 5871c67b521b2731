"""How hard is the phantom? Linear baselines on thumbnails, on the template's exact split.

Selects data exactly as `experiment=template` does (640 balanced images, patient-grouped
60:20:20 split, seed 12345), then fits logistic regression on 32x32 and 64x64 thumbnails
(regularization chosen on the validation split) and reports test AUROC. Compare with the
DenseNet121 of `python train.py experiment=template` (README). Writes benchmarks/results/phantom_difficulty.json.

    python benchmarks/phantom_difficulty.py
"""

from __future__ import annotations

import os

import numpy as np
from common import ROOT, save  # noqa: E402
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

os.environ.setdefault("CXRLAB_ROOT", str(ROOT))


def main() -> None:
    from hydra import compose, initialize_config_dir

    from cxrlab.data.cache import build_cache
    from cxrlab.data.datamodule import CXRDataModule
    from cxrlab.data.preprocess import PreprocessSpec

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train.yaml", overrides=["experiment=template"])
    d = cfg.data
    dm = CXRDataModule(
        source=dict(d.source),
        task=d.task,
        dataset_size=d.dataset_size,
        split=dict(d.split),
        seed=cfg.seed,
    )
    df = dm.select()
    y = (df["label"] == dm.classes[1]).to_numpy().astype(int)
    results = {
        "split_sizes": df["split"].value_counts().to_dict(),
    }
    for size in (32, 64):
        cache = build_cache(
            df["path"].tolist(), PreprocessSpec(size=size), ROOT / "data" / "cache", workers=2
        )
        x = cache.images.reshape(len(df), -1).astype(np.float32) / 255
        part = {s: (df["split"] == s).to_numpy() for s in ("train", "val", "test")}
        scaler = StandardScaler().fit(x[part["train"]])
        xs = scaler.transform(x)
        best = None
        for c in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
            clf = LogisticRegression(C=c, max_iter=3000).fit(xs[part["train"]], y[part["train"]])
            val = roc_auc_score(y[part["val"]], clf.predict_proba(xs[part["val"]])[:, 1])
            if best is None or val > best[0]:
                best = (val, c, clf)
        val_auc, c, clf = best
        test_auc = roc_auc_score(y[part["test"]], clf.predict_proba(xs[part["test"]])[:, 1])
        results[f"logreg_{size}px"] = {
            "C": c,
            "val_auroc": round(val_auc, 4),
            "test_auroc": round(test_auc, 4),
        }
        print(
            f"logistic regression on {size}x{size} thumbnails: C={c} "
            f"val AUROC {val_auc:.3f}, test AUROC {test_auc:.3f}"
        )
    save("phantom_difficulty", results)


if __name__ == "__main__":
    main()
