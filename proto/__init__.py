"""pyctr proto."""
