"""guestload: guest load averages of libvirt VMs as Prometheus metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("guestload")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0+unknown"
