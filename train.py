"""Train a chest X-ray classifier: `python train.py experiment=template` (see README.md)."""

import os
from pathlib import Path

import hydra

import cxrlab  # noqa: F401  (registers the config resolvers, e.g. ${cxrlab.default:...})
from cxrlab.errors import exit_on_user_error

os.environ.setdefault("CXRLAB_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
@exit_on_user_error
def main(cfg):
    from cxrlab.training import objective, train

    metrics, _ = train(cfg)
    return objective(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
