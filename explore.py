"""A first look at a dataset before training on it: `python explore.py data=kaggle_pneumonia`."""

import os
from pathlib import Path

import hydra

import cxrlab  # noqa: F401  (registers the config resolvers)
from cxrlab.errors import exit_on_user_error

os.environ.setdefault("CXRLAB_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="explore.yaml")
@exit_on_user_error
def main(cfg):
    from cxrlab.data.explore import explore

    explore(cfg)


if __name__ == "__main__":
    main()
