"""Get the datasets cxrlab reads: `python download_data.py --list`, then `python download_data.py <name>`."""

import sys

from cxrlab.download import main

if __name__ == "__main__":
    sys.exit(main())
