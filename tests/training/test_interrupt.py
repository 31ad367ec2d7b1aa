"""StopRequest: which signals it takes over, what the first one does, and what it leaves."""

from __future__ import annotations

import os
import signal

import pytest

from hco_cli.training.interrupt import StopRequest


def test_the_first_sigterm_asks_to_stop_and_puts_both_defaults_back(
        capfd: pytest.CaptureFixture[str]) -> None:
    """After the first signal a second one of either kind acts at once (SIGTERM would end
    the process: a supervisor's escalation still works)."""
    stop = StopRequest()
    with stop.installed():
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert "SIGTERM: stopping after this iteration" in capfd.readouterr().err


def test_a_job_runners_sigterm_handler_is_left_alone() -> None:
    """A SIGTERM handler that is not the default (submitit's, say) stays; SIGINT is taken."""
    calls: list[int] = []

    def runner(signum: int, frame: object) -> None:
        calls.append(signum)

    before = signal.signal(signal.SIGTERM, runner)
    try:
        stop = StopRequest()
        with stop.installed():
            assert signal.getsignal(signal.SIGTERM) is runner
            os.kill(os.getpid(), signal.SIGTERM)
            assert calls == [signal.SIGTERM] and not stop.requested
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested
        assert signal.getsignal(signal.SIGTERM) is runner
    finally:
        signal.signal(signal.SIGTERM, before)


def test_nothing_is_installed_when_not_enabled() -> None:
    stop = StopRequest()
    with stop.installed(enabled=False):
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_kept_handlers_take_every_later_signal_and_remember_the_first(
        capfd: pytest.CaptureFixture[str]) -> None:
    """A torchrun rank (keep=True): Slurm's SIGTERM and then the agent's own change nothing
    after the first, which gives the exit code (128 + 15); a rank other than 0 says nothing."""
    stop = StopRequest()
    with stop.installed(notice=None, keep=True):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt without keep
        os.kill(os.getpid(), signal.SIGTERM)  # would end the process without keep
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert capfd.readouterr().err == ""
