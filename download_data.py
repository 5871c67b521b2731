"""List the datasets cxrlab reads and how to get them: `python download_data.py --list`."""

import sys

from cxrlab.download import main

if __name__ == "__main__":
    sys.exit(main())
