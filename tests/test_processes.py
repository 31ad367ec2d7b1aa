"""signal_on_parent_death: a child told to get a signal when its parent dies gets it."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

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
