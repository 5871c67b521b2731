"""Evaluate a checkpoint and write its report: `python eval.py ckpt_path=.../best.ckpt`."""

import os
from pathlib import Path

import hydra

from cxrlab.errors import exit_on_user_error

os.environ.setdefault("CXRLAB_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="eval.yaml")
@exit_on_user_error
def main(cfg):
    from cxrlab.evaluation.run import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
