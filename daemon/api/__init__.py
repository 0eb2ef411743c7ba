"""pyctr's native API (pyctr.v1) services, for the `pyctr` client."""
