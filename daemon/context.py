"""What the daemon's services share: config, metadata and the stores.

One `Context` is built at startup (see `daemon.Daemon`) and handed to every
service; nothing else is global.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyctr.daemon.cgroups import Cgroups
from pyctr.daemon.config import Config
from pyctr.daemon.metadata import Metadata


@dataclass
class Context:
    config: Config
    config_file: Path | None
    db: Metadata
    runc_path: str | None
    cgroups: Cgroups
    started_at_ns: int = field(default_factory=time.time_ns)
    # Stores and managers, set by `Daemon.start` as they are built. Typed Any
    # here so this module imports none of them (the shim client stays light).
    snapshotter: Any = None
    content: Any = None
    images: Any = None
    runtime: Any = None
    events: Any = None
    sandboxes: Any = None  # CRI pod sandboxes (pyctr.daemon.pods.manager.SandboxManager)
    streaming: Any = None  # exec/attach/port-forward URLs (pyctr.daemon.streaming.server)
