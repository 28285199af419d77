"""Real processes for the security and fault tests: ``guestload serve`` exporters, daemons.

The exporters are :class:`guestload_lab.services.Exporter` processes; the fixtures in this
folder's conftest stop every one of them by its id at the end of the test.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from guestload_lab.libvirtd import TestDriverLibvirtd
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Exporter

GUESTLOAD = Path(sys.executable).parent / "guestload"
START_TIMEOUT_SECONDS = 20.0
NODE = "test-node"


@dataclass
class Exporters:
    """Starts ``guestload serve`` processes in ``folder``; all stopped at the end of the test."""

    folder: Path
    registry: ProcessRegistry
    started: list[Exporter] = field(default_factory=list)

    def start(
        self,
        *args: str,
        user: str | None = None,
        group: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Exporter:
        """``guestload serve`` polling every second with ``args`` added to its flags."""
        exporter = Exporter(
            libvirt_uri=None,
            node=NODE,
            workdir=self.folder,
            registry=self.registry,
            interval="1s",
            agent_timeout="500ms",
            extra_args=args,
            name=f"guestload-{len(self.started)}",
            user=user,
            group=group,
            env=env,
        )
        self.started.append(exporter)
        exporter.start(START_TIMEOUT_SECONDS)
        return exporter


DaemonFactory = Callable[..., TestDriverLibvirtd]
"""Builds (does not start) a test-driver daemon with the given options."""


def command_output(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)
