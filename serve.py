"""Serve a checkpoint over HTTP: `python serve.py --ckpt best.ckpt --host 127.0.0.1 --port 8000`.

Every setting can also come from the environment (CXRLAB_CKPT, CXRLAB_PORT, CXRLAB_WORKERS...:
`python serve.py --help`); the container image (Dockerfile) is configured that way."""

import logging
import sys

try:
    from cxrlab.inference.service import main
except ImportError as e:  # the optional extra
    sys.exit(f"serve.py needs FastAPI and uvicorn ({e}): pip install -e '.[serve]'")

if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    )
    main()
