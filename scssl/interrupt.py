"""Stopping a study with SIGINT (Ctrl-C) or SIGTERM: the driver raises KeyboardInterrupt, each stage closes
its open runs as KILLED naming the signal, and Ray is shut down; a second signal ends the process at once."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

_received: list[str] = []  # the names of the signals seen while ``stop_on_signals`` is active
_active = False


SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _handler(number, frame):
    _received.append(signal.Signals(number).name)
    if len(_received) > 1:
        os._exit(128 + number)
    raise KeyboardInterrupt(_received[0])


@contextmanager
def stop_on_signals():
    """Turn SIGINT and SIGTERM into KeyboardInterrupt for the block (Tune's own handler would swallow the
    first Ctrl-C and carry on); yields the list of signal names received."""
    global _active
    _received.clear()
    previous = {number: signal.getsignal(number) for number in SIGNALS}
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    _active = True
    take_signals_back()
    try:
        yield _received
    finally:
        _active = False
        for number, old in previous.items():
            signal.signal(number, old)


def take_signals_back() -> None:
    """Inside ``stop_on_signals``, install its handler again: ``ray.init`` sets its own for SIGTERM (exit
    at once, no cleanup)."""
    if _active:
        for number in SIGNALS:
            signal.signal(number, _handler)


def stop_reason(stop: BaseException) -> str:
    """Why the driver stopped, e.g. "SIGTERM": Ray re-raises a KeyboardInterrupt without its message."""
    return _received[0] if _received else (str(stop) or type(stop).__name__)
