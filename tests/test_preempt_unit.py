"""PreemptionFlag and NoticePoller against real signals, real child processes and a real HTTP server."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from slmtrain.errors import ConfigError
from slmtrain.preempt import EXIT_ABORTED, EXIT_PREEMPTED, NoticePoller, PreemptionFlag

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals required")

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

# The child stands in for the training loop: it polls the flag, then "saves" for argv[1] seconds.
CHILD = """
import sys, time
from slmtrain.preempt import EXIT_ABORTED, EXIT_PREEMPTED, PreemptionFlag

flag = PreemptionFlag()
flag.install()
print("ready", flush=True)
try:
    deadline = time.monotonic() + 20
    while not flag.check():
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.002)
    print("saving", flag.reason, flush=True)
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        time.sleep(0.002)
    print("saved", flag.reason, flush=True)
    sys.exit(EXIT_PREEMPTED)
except KeyboardInterrupt:
    print("aborted", flush=True)
    sys.exit(EXIT_ABORTED)
"""


class Child:
    """The CHILD script in a subprocess, killed by a watchdog so a hang fails the test instead of CI."""

    def __init__(self, save_seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(save_seconds)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self._watchdog = threading.Timer(15.0, self.proc.kill)
        self._watchdog.start()

    def line(self) -> str:
        return self.proc.stdout.readline().strip()

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def finish(self) -> tuple[int, str]:
        # Not communicate(): it reads the raw pipe and would miss lines readline() already buffered.
        rest = self.proc.stdout.read()
        self.proc.wait()
        self._watchdog.cancel()
        self.proc.stdout.close()
        return self.proc.returncode, rest


@pytest.mark.parametrize("sig", HANDLED, ids=lambda s: s.name)
def test_signal_sets_flag_in_child_and_it_exits_preempted(sig: signal.Signals) -> None:
    child = Child(save_seconds=0.0)
    assert child.line() == "ready"
    child.signal(sig)
    assert child.line() == f"saving {sig.name}"
    rc, rest = child.finish()
    assert rc == EXIT_PREEMPTED, rest
    assert f"saved {sig.name}" in rest


def test_second_sigint_aborts_child_at_once() -> None:
    child = Child(save_seconds=30.0)  # a save nobody wants to wait for
    assert child.line() == "ready"
    child.signal(signal.SIGINT)
    assert child.line() == "saving SIGINT"
    t0 = time.monotonic()
    child.signal(signal.SIGINT)
    rc, rest = child.finish()
    assert rc == EXIT_ABORTED, rest
    assert "aborted" in rest
    assert time.monotonic() - t0 < 3.0


def test_repeated_sigterm_and_sigusr1_do_not_abort_and_first_reason_wins() -> None:
    child = Child(save_seconds=0.5)
    assert child.line() == "ready"
    child.signal(signal.SIGTERM)
    assert child.line() == "saving SIGTERM"
    child.signal(signal.SIGUSR1)
    child.signal(signal.SIGTERM)
    rc, rest = child.finish()
    assert rc == EXIT_PREEMPTED, rest
    assert "saved SIGTERM" in rest


@pytest.fixture
def sentinel_handlers() -> Iterator[list[int]]:
    """Install recording handlers for the handled signals (so a stray signal cannot kill pytest)."""
    seen: list[int] = []
    originals = {s: signal.getsignal(s) for s in HANDLED}

    def record(signum: int, frame: object) -> None:
        seen.append(signum)

    for s in HANDLED:
        signal.signal(s, record)
    try:
        yield seen
    finally:
        for s, h in originals.items():
            signal.signal(s, h)


def test_install_routes_signals_and_uninstall_restores_previous_handlers(sentinel_handlers: list[int]) -> None:
    previous = {s: signal.getsignal(s) for s in HANDLED}
    with PreemptionFlag() as flag:
        assert all(signal.getsignal(s) is not previous[s] for s in HANDLED)
        signal.raise_signal(signal.SIGUSR1)
        assert flag.reason == "SIGUSR1"
        signal.raise_signal(signal.SIGTERM)  # a second non-SIGINT signal is recorded as nothing new
        assert flag.reason == "SIGUSR1"
        assert sentinel_handlers == []
    assert all(signal.getsignal(s) is previous[s] for s in HANDLED)
    signal.raise_signal(signal.SIGUSR1)
    signal.raise_signal(signal.SIGINT)
    assert sentinel_handlers == [signal.SIGUSR1, signal.SIGINT]
    assert flag.reason == "SIGUSR1"  # uninstall leaves the state for the loop to read


def test_second_sigint_raises_keyboard_interrupt_in_process(sentinel_handlers: list[int]) -> None:
    with PreemptionFlag() as flag:
        signal.raise_signal(signal.SIGINT)
        assert flag.reason == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert sentinel_handlers == []


def test_install_refuses_off_main_thread_and_twice(sentinel_handlers: list[int]) -> None:
    flag = PreemptionFlag()
    errors: list[BaseException] = []

    def off_main() -> None:
        try:
            flag.install()
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=off_main)
    t.start()
    t.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])
    with flag, pytest.raises(RuntimeError, match="already installed"):
        flag.install()
    assert signal.getsignal(signal.SIGTERM) is not None and sentinel_handlers == []
    signal.raise_signal(signal.SIGTERM)
    assert sentinel_handlers == [signal.SIGTERM]


def test_set_first_reason_wins_and_time_is_recorded() -> None:
    flag = PreemptionFlag()
    assert (flag.is_set, flag.check(), flag.reason, flag.time, flag.seconds_since()) == (False, False, None, None, None)
    before = time.monotonic()
    flag.set("notice:file")
    flag.set("SIGTERM")
    assert flag.is_set and flag.check()
    assert flag.reason == "notice:file"
    assert before <= flag.time <= time.monotonic()
    time.sleep(0.01)
    assert flag.seconds_since() >= 0.01


def test_concurrent_set_keeps_exactly_one_reason() -> None:
    flag = PreemptionFlag()
    barrier = threading.Barrier(8)
    seen: list[str | None] = []

    def racer(i: int) -> None:
        barrier.wait()
        flag.set(f"t{i}")
        seen.append(flag.reason)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert flag.reason in {f"t{i}" for i in range(8)}
    assert seen == [flag.reason] * 8


# -- NoticePoller ------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


class NoticeServer(ThreadingHTTPServer):
    """Answers `status` with `body`; `hits`/`done` count requests started/answered."""

    status = 404
    body = ""
    delay = 0.0
    hits = 0
    done = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/computeMetadata/v1/instance/preempted"


class NoticeHandler(BaseHTTPRequestHandler):
    server: NoticeServer

    def do_GET(self) -> None:
        srv = self.server
        srv.hits += 1
        time.sleep(srv.delay)
        data = srv.body.encode()
        self.send_response(srv.status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        srv.done += 1

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[NoticeServer]:
    srv = NoticeServer(("127.0.0.1", 0), NoticeHandler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_poller_fires_when_file_appears(tmp_path) -> None:
    notice = tmp_path / "preempt-notice"
    flag = PreemptionFlag()
    poller = NoticePoller(flag, file=str(notice), interval=0.1)
    poller.start()
    try:
        time.sleep(0.25)
        assert not flag.is_set
        notice.write_text("")
        t0 = time.monotonic()
        assert wait_until(flag.check)
        assert time.monotonic() - t0 < 0.1 + 0.6  # one interval, plus slack for a loaded CI machine
        assert flag.reason == "notice:file"
    finally:
        poller.stop()


def test_poller_fires_when_url_switches_from_404_to_terminate(server: NoticeServer) -> None:
    flag = PreemptionFlag()
    poller = NoticePoller(flag, url=server.url, interval=0.05)
    poller.start()
    try:
        assert wait_until(lambda: server.done >= 3)
        assert not flag.is_set
        assert poller.errors == 0  # 404 is the normal "nothing scheduled" answer
        server.status, server.body = 200, "TERMINATE"
        assert wait_until(flag.check)
        assert flag.reason == "notice:url"
        hits = server.hits
        time.sleep(0.25)
        assert server.hits == hits  # it stops polling once fired
    finally:
        poller.stop()


@pytest.mark.parametrize("body", ["false", " FALSE\n", "0", "null", "None", "", "  \n"])
def test_poller_ignores_bodies_that_say_no(server: NoticeServer, body: str) -> None:
    server.status, server.body = 200, body
    flag = PreemptionFlag()
    poller = NoticePoller(flag, url=server.url, interval=0.02)
    poller.start()
    try:
        assert wait_until(lambda: server.done >= 3)
        assert not flag.is_set
        assert poller.errors == 0
    finally:
        poller.stop()


def test_poller_counts_server_errors_and_keeps_polling(server: NoticeServer) -> None:
    server.status, server.body = 500, "TERMINATE"
    flag = PreemptionFlag()
    poller = NoticePoller(flag, url=server.url, interval=0.02)
    poller.start()
    try:
        assert wait_until(lambda: poller.errors >= 3)
        assert not flag.is_set
        assert poller.last_error == "HTTP 500"
    finally:
        poller.stop()


def test_poller_survives_a_closed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flag = PreemptionFlag()
    poller = NoticePoller(flag, url=f"http://127.0.0.1:{port}/", interval=0.02)
    poller.start()
    try:
        assert wait_until(lambda: poller.errors >= 3)
        assert not flag.is_set
        assert poller.last_error is not None
    finally:
        poller.stop()


def test_poller_stops_polling_when_flag_is_set_elsewhere(server: NoticeServer) -> None:
    flag = PreemptionFlag()
    poller = NoticePoller(flag, url=server.url, interval=0.02)
    poller.start()
    try:
        assert wait_until(lambda: server.done >= 2)
        flag.set("SIGTERM")
        time.sleep(0.1)
        hits = server.hits
        time.sleep(0.2)
        assert server.hits == hits
        assert flag.reason == "SIGTERM"
    finally:
        poller.stop()


def test_stop_is_prompt_when_idle(tmp_path) -> None:
    poller = NoticePoller(PreemptionFlag(), file=str(tmp_path / "never"), interval=30.0)
    before = set(threading.enumerate())
    poller.start()
    (thread,) = set(threading.enumerate()) - before
    assert thread.name == "slmtrain-notice-poller" and thread.daemon
    time.sleep(0.05)
    t0 = time.monotonic()
    poller.stop()
    assert time.monotonic() - t0 < 0.4  # well under the 30 s interval and the 0.5 s join timeout
    assert not thread.is_alive()


def test_stop_is_prompt_during_a_hanging_request_and_a_late_answer_is_dropped(server: NoticeServer) -> None:
    server.status, server.body, server.delay = 200, "TERMINATE", 1.5
    flag = PreemptionFlag()
    poller = NoticePoller(flag, url=server.url, interval=5.0)  # request timeout: 2 s
    poller.start()
    assert wait_until(lambda: server.hits >= 1)
    t0 = time.monotonic()
    poller.stop()
    assert time.monotonic() - t0 < 1.0
    assert wait_until(lambda: server.done >= 1)
    time.sleep(0.1)
    assert not flag.is_set


def test_poller_rejects_bad_settings_and_idles_with_nothing_to_watch() -> None:
    flag = PreemptionFlag()
    with pytest.raises(ConfigError, match="notice_interval"):
        NoticePoller(flag, file="x", interval=0)
    with pytest.raises(ConfigError, match="notice_url"):
        NoticePoller(flag, url="169.254.169.254/latest/meta-data/spot/instance-action")
    poller = NoticePoller(flag)
    before = set(threading.enumerate())
    poller.start()
    assert set(threading.enumerate()) == before
    poller.stop()
