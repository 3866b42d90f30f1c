"""Preemption: signal handlers that only record, and a poller for cloud preemption notices.

Both sources feed one `PreemptionFlag`. The training loop calls `flag.check()` at step boundaries;
when it turns true the run finishes the current optimizer step, saves, and exits with
`EXIT_PREEMPTED` (75, EX_TEMPFAIL: "requeue me"). Agreement across ranks (an all-reduce of the
flag) lives with the distributed code, not here, so this module stays stdlib-only.

A second SIGINT while the flag is already set raises `KeyboardInterrupt` from the handler; the CLI
maps that to `EXIT_ABORTED` (130, the shell convention for death by SIGINT) without saving.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from types import FrameType, TracebackType
from typing import Any

from slmtrain.errors import ConfigError

EXIT_PREEMPTED = 75
EXIT_ABORTED = 130

# SIGUSR1 is what SLURM (`--signal=USR1@120`) and some schedulers send ahead of a kill; absent on Windows.
_SIGNALS: tuple[signal.Signals, ...] = tuple(
    s for s in (getattr(signal, name, None) for name in ("SIGTERM", "SIGINT", "SIGUSR1")) if s is not None
)
_NO_NOTICE_BODIES = frozenset({"", "false", "0", "none", "null"})
_MAX_BODY_BYTES = 64 * 1024


class PreemptionFlag:
    """A one-way flag set by SIGTERM / SIGINT / SIGUSR1 or by `set()`; the first reason wins.

    The signal handler does no I/O, logging or locking: it runs on the main thread between two
    bytecodes, possibly while that same thread is inside `set()` or a lock it holds, so taking a
    lock there could deadlock. First-wins is instead a single `dict.setdefault`, which is atomic
    with respect to both other threads and signal handlers (neither can run inside one C call).

    Handlers are Python-level, so a signal that arrives during a long C call (a big matmul) is
    acted on when that call returns; the "abort at once" of a second SIGINT means at that point.
    """

    def __init__(self) -> None:
        self._first: dict[str, tuple[str, float]] = {}
        self._previous: dict[signal.Signals, Any] = {}

    # -- state ------------------------------------------------------------------------------

    def set(self, reason: str) -> None:
        """Set the flag; safe from any thread and from a signal handler. Later reasons are ignored.

        Args:
            reason: short tag saved in events and run.json, e.g. "SIGTERM" or "notice:url".
        """
        self._first.setdefault("first", (reason, time.monotonic()))

    def check(self) -> bool:
        """Whether the flag is set. One dict lookup: cheap enough for every micro-step."""
        return "first" in self._first

    @property
    def is_set(self) -> bool:
        """Same as `check()`, as a property for readers that are not on the hot path."""
        return "first" in self._first

    @property
    def reason(self) -> str | None:
        """The first reason given ("SIGTERM", "SIGINT", "SIGUSR1", "notice:file", ...), or None."""
        first = self._first.get("first")
        return first[0] if first else None

    @property
    def time(self) -> float | None:
        """`time.monotonic()` when the flag was first set, or None."""
        first = self._first.get("first")
        return first[1] if first else None

    def seconds_since(self) -> float | None:
        """Seconds since the flag was first set (to budget the save against a grace period), or None."""
        first = self._first.get("first")
        return time.monotonic() - first[1] if first else None

    # -- signal handlers --------------------------------------------------------------------

    def install(self) -> None:
        """Route SIGTERM, SIGINT and SIGUSR1 to this flag, remembering the handlers they replace.

        Raises:
            RuntimeError: when called off the main thread (Python only delivers signals there), or
                when this flag is already installed (a second install would lose the originals).
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionFlag.install() must be called from the main thread")
        if self._previous:
            raise RuntimeError("PreemptionFlag is already installed; call uninstall() first")
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Restore the handlers `install()` replaced. The flag keeps its state. No-op if not installed."""
        while self._previous:
            sig, previous = self._previous.popitem()
            # None means the old handler was set from C, which Python cannot reinstate; the default is closest.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)

    def __enter__(self) -> PreemptionFlag:
        self.install()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and "first" in self._first:
            # Ctrl-C while a graceful stop is already pending (from any source): the user wants out now.
            raise KeyboardInterrupt
        self.set(signal.Signals(signum).name)


class NoticePoller:
    """Daemon thread that sets a `PreemptionFlag` when a preemption notice appears.

    Every `interval` seconds, until the flag is set (by anyone) or `stop()` is called:
    - `file`: the file exists -> `flag.set("notice:file")`.
    - `url`: an HTTP GET answers 200 with a body other than empty / "false" / "0" / "none" /
      "null" (case and whitespace ignored) -> `flag.set("notice:url")`. This fits metadata
      endpoints that 404 until a preemption is scheduled (AWS spot `instance-action`) or answer
      "FALSE"/"TRUE" (GCE `instance/preempted`). 404 is a normal "no notice"; anything else that
      is not an answer (refused, timeout, other status) is counted in `errors`, never raised.
      AWS IMDSv2 (token required) is not spoken; such hosts need IMDSv1 or a `file` notice.

    With neither `file` nor `url`, `start()` does nothing, so callers need no special case.

    Args:
        flag: the flag to set.
        file: path whose existence means "preempt" ("" to disable).
        url: http(s) URL to poll ("" to disable); the request timeout is min(2 s, interval).
        interval: seconds between polls; the first poll is immediate.

    Attributes:
        errors: URL polls that got no usable answer (refused, timeout, a status other than 200/404).
        last_error: the most recent such failure, for a diagnostic line; None if there was none.

    Raises:
        ConfigError: `interval` is not positive or `url` is not an http(s) URL.
    """

    def __init__(self, flag: PreemptionFlag, *, file: str = "", url: str = "", interval: float = 5.0) -> None:
        if not interval > 0:
            raise ConfigError(f"checkpoint.notice_interval must be > 0 seconds, got {interval!r}; "
                              f"set it to how often to poll for a preemption notice, e.g. 5.0.")
        if url and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"checkpoint.notice_url must be an http:// or https:// URL, got {url!r}; "
                              f"point it at the metadata endpoint that announces preemption, or set it to \"\".")
        self._flag = flag
        self._file = file
        self._url = url
        self._interval = float(interval)
        self._timeout = min(2.0, self._interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Metadata endpoints are local or link-local: a proxy from the environment must not answer for them.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.errors = 0
        self.last_error: str | None = None

    def start(self) -> None:
        """Start polling in a daemon thread (no-op with nothing to watch or when already started)."""
        if not (self._file or self._url) or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="slmtrain-notice-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 0.5) -> None:
        """Stop polling and wait up to `timeout` seconds for the thread.

        An HTTP request already in flight may outlive the wait (it is bounded by its own timeout);
        the thread is a daemon and will not set the flag once stopped.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set() and not self._flag.check():
            reason = self._poll()
            if reason is not None and not self._stop.is_set():
                self._flag.set(reason)
                return
            self._stop.wait(self._interval)

    def _poll(self) -> str | None:
        if self._file and os.path.exists(self._file):
            return "notice:file"
        if self._url and self._url_says_preempt():
            return "notice:url"
        return None

    def _url_says_preempt(self) -> bool:
        # GCE refuses metadata requests without this header; other servers ignore it.
        request = urllib.request.Request(self._url, headers={"Metadata-Flavor": "Google"})
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                if response.status != 200:
                    return False
                body = response.read(_MAX_BODY_BYTES)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code != 404:
                self._record_error(f"HTTP {e.code}")
            return False
        except Exception as e:  # noqa: BLE001 - any failure is "no notice"; a dead poller would hide real ones
            self._record_error(f"{type(e).__name__}: {e}")
            return False
        return body.decode("utf-8", "replace").strip().lower() not in _NO_NOTICE_BODIES

    def _record_error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message

