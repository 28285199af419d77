"""The lab's Windows-like guest agent: ``windows_agent.c``, built on the host as a static binary.

No Windows image exists in the lab. A Linux guest booted with ``VmSpec(agent=AgentKind.WINDOWS)``
runs this small agent instead of qemu-ga: it answers ``guest-get-osinfo`` as Windows Server 2022,
``guest-get-load`` with the Windows agent's semantics (an average of the processor queue,
starting at 0 on the first call; see the C file's header) and ``guest-get-cpustats`` with the
Windows agent's "not supported" error. ``gcc`` and the static C library come from
``scripts/install-system-deps`` (``gcc``, ``libc6-dev``). The binary is cached under a hash of
the source and the compiler flags, so a second build is a file lookup.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

from guestload_lab.deps import DEFAULT_CACHE_DIR

SOURCE = Path(__file__).with_name("windows_agent.c")
COMPILER_FLAGS = ("-static", "-O2", "-std=gnu11", "-Wall", "-Wextra")
GUEST_PATH = "/opt/qemu-ga-win/qemu-ga"
"""Where the image keeps the agent. Named ``qemu-ga`` so ``pidof qemu-ga`` finds it too."""
UNSUPPORTED_ERROR = "this feature or command is not currently supported"
"""What the Windows agent answers to ``guest-get-cpustats`` and ``guest-get-diskstats``."""
OS_ID = "mswindows"
LOAD_SAMPLING_SECONDS = 5
"""Windows' qemu-ga samples the processor queue every 5 s (``LOADAVG_SAMPLING_INTERVAL``)."""


class AgentBuildError(RuntimeError):
    """The agent could not be compiled."""


def build_windows_agent(*, cache_dir: Path = DEFAULT_CACHE_DIR, compiler: str = "gcc") -> Path:
    """Return the cached static agent binary, compiling ``windows_agent.c`` first if missing."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + "\0".join(COMPILER_FLAGS).encode()).hexdigest()[:16]
    folder = cache_dir / "windows-agent"
    binary = folder / f"qemu-ga-win-{digest}"
    if binary.exists():
        return binary
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as staging:
        output = Path(staging) / "qemu-ga"
        try:
            result = subprocess.run(
                [compiler, *COMPILER_FLAGS, "-o", str(output), str(SOURCE)],
                capture_output=True,
                text=True,
                check=False,
                timeout=300,
            )
        except FileNotFoundError as error:
            raise AgentBuildError(
                f"{compiler} not found: run scripts/install-system-deps (gcc, libc6-dev)"
            ) from error
        if result.returncode != 0:
            raise AgentBuildError(f"{compiler} failed ({result.returncode}):\n{result.stderr}")
        output.rename(binary)
    return binary
