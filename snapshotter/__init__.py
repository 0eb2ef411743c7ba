"""pyctr snapshotter."""
