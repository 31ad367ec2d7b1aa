"""signal_on_parent_death and stop_with_parent: a child told to get a signal when its parent
dies gets it, from the kernel (Linux) or from a thread watching the parent (elsewhere)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hco_cli import processes
from hco_cli.processes import libc_prctl, signal_on_parent_death

# The parent starts a child that asks for SIGTERM on the parent's death, writes its pid and
# sleeps; the parent then dies at once without a word to it (os._exit).
_PARENT = textwrap.dedent("""
    import os, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]])
    while not os.path.exists(sys.argv[2]):
        pass
    os._exit(0)
""")
_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from hco_cli.processes import libc_prctl, signal_on_parent_death
    def ended(signum, frame):
        open(sys.argv[2] + ".ended", "w").write(signal.Signals(signum).name)
        sys.exit(0)
    signal.signal(signal.SIGTERM, ended)
    signal_on_parent_death(signal.SIGTERM, parent=int(sys.argv[1]), prctl=libc_prctl())
    open(sys.argv[2], "w").write(str(os.getpid()))
    time.sleep(60)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_gets_its_signal_when_the_parent_dies(tmp_path: Path) -> None:
    ready = tmp_path / "child"
    subprocess.run([sys.executable, "-c", _PARENT, _CHILD, str(ready)], check=True, timeout=60)
    ended = ready.with_name("child.ended")
    deadline = time.monotonic() + 30
    while not ended.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ended.read_text() == "SIGTERM"


def test_nothing_happens_without_prctl() -> None:
    """Off Linux (no prctl) the call does nothing, and returns."""
    signal_on_parent_death(signal.SIGTERM, parent=1, prctl=None)  # our parent is not pid 1


def test_prctl_is_found_on_linux_only() -> None:
    assert (libc_prctl() is not None) == sys.platform.startswith("linux")


# The same child without the kernel's help (prctl=None, what every system but Linux has): the
# parent names itself in PARENT_ENV, as hco sweep does for its runs, and the child watches it.
_WATCHING_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from hco_cli.processes import PARENT_ENV, stop_with_parent_from_env
    def ended(signum, frame):
        open(sys.argv[2] + ".ended", "w").write(signal.Signals(signum).name)
        sys.exit(0)
    signal.signal(signal.SIGTERM, ended)
    assert os.environ[PARENT_ENV] == sys.argv[1]
    watcher = stop_with_parent_from_env(signal.SIGTERM, prctl=None, interval=0.05)
    assert watcher is not None and watcher.daemon and PARENT_ENV not in os.environ
    open(sys.argv[2], "w").write(str(os.getpid()))
    time.sleep(60)
""")
_NAMING_PARENT = _PARENT.replace(
    "import os, subprocess, sys\n",
    "import os, subprocess, sys\nos.environ[sys.argv[3]] = str(os.getpid())\n")


def _wait_for(path: Path, seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.read_text()


def test_without_prctl_a_thread_watches_the_parent_the_environment_names(tmp_path: Path) -> None:
    ready = tmp_path / "child"
    subprocess.run([sys.executable, "-c", _NAMING_PARENT, _WATCHING_CHILD, str(ready),
                    processes.PARENT_ENV], check=True, timeout=60)
    assert _wait_for(ready.with_name("child.ended")) == "SIGTERM"


def test_the_watch_sends_at_once_when_the_parent_is_gone_already() -> None:
    got: list[int] = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    try:
        watcher = processes.stop_with_parent(signal.SIGUSR1, parent=-1, prctl=None,
                                             interval=0.01)
        assert watcher is not None
        watcher.join(10)
        time.sleep(0.05)  # the handler runs on the main thread, between bytecodes
        assert got == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_from_env_does_nothing_without_a_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(processes.PARENT_ENV, raising=False)
    assert processes.stop_with_parent_from_env(signal.SIGINT, prctl=None) is None
    monkeypatch.setenv(processes.PARENT_ENV, "not-a-pid")
    assert processes.stop_with_parent_from_env(signal.SIGINT, prctl=None) is None
    assert processes.PARENT_ENV not in os.environ  # read once, whatever it held


def test_with_prctl_the_kernel_is_asked_and_no_thread_starts() -> None:
    calls: list[tuple[int, int]] = []
    watcher = processes.stop_with_parent(signal.SIGINT, parent=os.getppid(),
                                         prctl=lambda option, sig: calls.append((option, sig)) or 0)
    assert watcher is None and calls == [(1, int(signal.SIGINT))]
