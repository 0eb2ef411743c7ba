"""What the daemon's services share: config, metadata and the stores.

One `Context` is built at startup (see `daemon.Daemon`) and handed to every
service; nothing else is global.
"""

from __future__ import annotations

import time
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pyctr.daemon.cgroups import Cgroups
from pyctr.daemon.config import Config
from pyctr.daemon.events import EventBus
from pyctr.daemon.metadata import Metadata
from pyctr.daemon.spec.apparmor import AppArmor

if TYPE_CHECKING:
    # For the checker only: importing them here would load the whole daemon
    # wherever a Context is named.
    from pyctr.daemon.images.content import ContentStore
    from pyctr.daemon.images.manager import ImageManager
    from pyctr.daemon.images.volumes import ImageVolumes
    from pyctr.daemon.nri.adaptation import Nri
    from pyctr.daemon.pods.manager import SandboxManager
    from pyctr.daemon.runtime.handlers import Handlers
    from pyctr.daemon.runtime.manager import RuntimeManager
    from pyctr.daemon.snapshots import Snapshots
    from pyctr.daemon.streaming.server import StreamingServer


@dataclass
class Context:
    config: Config
    config_file: Path | None
    db: Metadata
    runc_path: str | None
    cgroups: Cgroups
    started_at_ns: int = field(default_factory=time.time_ns)
    # AppArmor as the kernel has it (off: the CRI fields are accepted, nothing applied).
    apparmor: AppArmor = field(default_factory=AppArmor.detect, repr=False, compare=False)
    events: EventBus = field(default_factory=EventBus, repr=False, compare=False)
    # The runtime handlers as `handlers.probe` found them; without, runc alone.
    probed_handlers: InitVar[Handlers | None] = None
    handlers: Handlers = field(init=False, repr=False, compare=False)
    # Set by `Daemon.start` in its build order. Reading one before it is set
    # is a wiring bug, and fails (AttributeError) rather than handing out None.
    snapshotter: Snapshots = field(init=False, repr=False, compare=False)
    content: ContentStore = field(init=False, repr=False, compare=False)
    images: ImageManager = field(init=False, repr=False, compare=False)
    image_volumes: ImageVolumes = field(init=False, repr=False, compare=False)
    runtime: RuntimeManager = field(init=False, repr=False, compare=False)
    sandboxes: SandboxManager = field(init=False, repr=False, compare=False)  # CRI pods
    streaming: StreamingServer = field(init=False, repr=False, compare=False)  # exec URLs
    nri: Nri = field(init=False, repr=False, compare=False)  # NRI plugins (maybe disabled)

    def __post_init__(self, probed_handlers: Handlers | None) -> None:
        from pyctr.daemon.runtime.handlers import single

        root = str(self.config.state_dir / "runc")
        self.handlers = probed_handlers or single(self.runc_path, root, self.config.runtime.runc)
