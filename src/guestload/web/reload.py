"""The active web configuration, and re-reading it on SIGHUP and when its files change."""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from guestload.web.basic_auth import BasicAuthenticator
from guestload.web.config import WebConfig, load_web_config
from guestload.web.errors import WebConfigError
from guestload.web.tls import build_ssl_context

log = logging.getLogger(__name__)

DEFAULT_CHECK_INTERVAL_SECONDS: Final = 1.0
"""How often the reloader looks at the files' modification times and sizes."""


# -- what the server uses, and reloading ----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSecurity:
    """A configuration made ready to serve: TLS context, authenticator, extra headers."""

    ssl_context: ssl.SSLContext | None = None
    client_allowed_sans: tuple[str, ...] = ()
    authenticator: BasicAuthenticator | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, config: WebConfig, *, previous: WebSecurity | None = None) -> WebSecurity:
        """Made ready; ``previous`` (the configuration replaced) passes on remembered logins."""
        authenticator = None
        if config.basic_auth_users:
            authenticator = BasicAuthenticator(
                config.basic_auth_users,
                previous=previous.authenticator if previous is not None else None,
            )
        return cls(
            ssl_context=build_ssl_context(config.tls) if config.tls else None,
            client_allowed_sans=config.tls.client_allowed_sans if config.tls else (),
            authenticator=authenticator,
            headers=tuple(config.headers.items()),
        )


PLAIN_HTTP: Final = WebSecurity()
"""No TLS, no authentication, no extra headers: serving without ``--web.config.file``."""

_Fingerprint = tuple[tuple[str, int, int, int], ...]


def _fingerprint(paths: tuple[Path, ...]) -> _Fingerprint:
    """What changes when a file is rewritten or a symlink swapped (as Kubernetes secrets are)."""
    marks = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            marks.append((str(path), -1, -1, -1))
        else:
            marks.append((str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return tuple(marks)


class WebConfigReloader:
    """Holds the active :class:`WebSecurity` and replaces it when the configuration changes.

    The constructor loads the file and raises :class:`WebConfigError` if it is unusable. After
    :meth:`start`, a thread re-reads it when :meth:`request_reload` is called (safe from a
    signal handler) and when the file or a certificate file it names changes and then stays
    unchanged for one check interval (so a file caught half-written is not read). A new file
    that fails validation, is empty while the active configuration is not (a truncated file
    must not switch authentication off), or would turn TLS on or off (that needs a restart)
    is logged and the old configuration stays.
    """

    def __init__(
        self,
        path: Path,
        *,
        check_interval_seconds: float = DEFAULT_CHECK_INTERVAL_SECONDS,
        loader: Callable[[Path], WebConfig] = load_web_config,
    ) -> None:
        self.path = path
        self._interval = check_interval_seconds
        self._loader = loader
        config = loader(path)
        self._config = config
        self._security = WebSecurity.from_config(config)
        self._watched = self._files(config)
        self._fingerprint = _fingerprint(self._watched)
        self._requested = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        if config.basic_auth_users and config.tls is None:
            log.warning(
                "basic authentication without TLS sends passwords in clear text",
                extra={"file": str(path)},
            )

    @property
    def current(self) -> WebSecurity:
        return self._security

    def request_reload(self) -> None:
        """Ask the reloader thread to re-read the file now (e.g. on SIGHUP)."""
        self._requested.set()

    def reload(self, *, reason: str) -> bool:
        """Re-read the file now; True when the new configuration is active."""
        before = _fingerprint(self._watched)
        try:
            config = self._loader(self.path)
            if config == WebConfig() and self._config != WebConfig():
                raise WebConfigError(
                    str(self.path), "is empty; write it atomically, or restart to serve without it"
                )
            if (config.tls is None) != (self._config.tls is None):
                raise WebConfigError(
                    "tls_server_config", "turning TLS on or off needs a restart of guestload"
                )
            security = WebSecurity.from_config(config, previous=self._security)
        except WebConfigError as error:
            self._fingerprint = before
            log.error(
                "web config not reloaded; keeping the previous one",
                extra={"file": str(self.path), "reason": reason, "err": str(error)},
            )
            return False
        self._config, self._security = config, security
        watched = self._files(config)
        self._fingerprint = before if watched == self._watched else _fingerprint(watched)
        self._watched = watched
        log.info("web config reloaded", extra={"file": str(self.path), "reason": reason})
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="guestload-webconfig", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._requested.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        changing: _Fingerprint | None = None
        while not self._stopped.is_set():
            requested = self._requested.wait(self._interval)
            if self._stopped.is_set():
                return
            if requested:
                self._requested.clear()
                self.reload(reason="signal")
                changing = None
                continue
            now = _fingerprint(self._watched)
            if now == self._fingerprint:
                changing = None
            elif now == changing:  # changed, then quiet for one interval
                self.reload(reason="file changed")
                changing = None
            else:
                changing = now

    def _files(self, config: WebConfig) -> tuple[Path, ...]:
        return (self.path, *(config.tls.files() if config.tls else ()))
