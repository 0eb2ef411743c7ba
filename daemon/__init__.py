"""pyctr daemon."""
