"""The stop-signal helper: the first SIGINT/SIGTERM asks for a clean stop, a second stops now."""

from __future__ import annotations

import logging
import os
import signal

import pytest

from idxr_pg.runtime.signals import StopRequest, stop_on_signals


def _deliver(signum: int) -> None:
    """Send ``signum`` to this process: its Python handler runs as soon as os.kill returns."""
    os.kill(os.getpid(), signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_first_signal_asks_for_a_clean_stop(signum: int, caplog) -> None:
    stopped: list[bool] = []
    stop = StopRequest(on_stop=lambda: stopped.append(True))
    assert not stop()
    with caplog.at_level(logging.WARNING, logger="idxr_pg.signals"), stop_on_signals(stop):
        _deliver(signum)
        assert stop() and stop.signum == signum
    assert stopped == [True]
    assert stop.exit_code == 128 + signum
    assert caplog.records[0].getMessage().startswith(f"{signal.Signals(signum).name} received")


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_stops_at_once(second: int) -> None:
    stopped: list[bool] = []
    stop = StopRequest(on_stop=lambda: stopped.append(True))
    reached_the_end = False
    with pytest.raises(KeyboardInterrupt), stop_on_signals(stop):
        _deliver(signal.SIGTERM)
        _deliver(second)
        reached_the_end = True
    assert not reached_the_end
    assert stopped == [True]  # the clean-stop hook runs once, on the first signal only
    assert stop.exit_code == 128 + signal.SIGTERM  # the code of the signal that asked first


def test_the_previous_handlers_come_back_after_the_block() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop = StopRequest()
    with stop_on_signals(stop) as given:
        assert given is stop
        assert signal.getsignal(signal.SIGTERM) == stop.handle
        assert signal.getsignal(signal.SIGINT) == stop.handle
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_without_a_signal_the_exit_code_is_that_of_ctrl_c() -> None:
    assert StopRequest().exit_code == 128 + signal.SIGINT
