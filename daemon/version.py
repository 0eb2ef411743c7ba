"""pyctr's release, read once from the installed package metadata."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("pyctr")
except metadata.PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0+source"

CRI_API_VERSION = "v1"
NATIVE_API_VERSION = "v1"
RUNTIME_NAME = "pyctr"
