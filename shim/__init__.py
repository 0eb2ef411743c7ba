"""pyctr shim."""
