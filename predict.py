"""Predict with a checkpoint: `python predict.py --ckpt best.ckpt IMAGES... --out preds.csv`."""

import sys

from cxrlab.inference.predictor import main

if __name__ == "__main__":
    sys.exit(main())
