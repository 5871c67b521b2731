"""cxrlab: chest X-ray classification."""
