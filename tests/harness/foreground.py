"""Running the real parts for a person at a terminal (``scripts/demo.py``,
``scripts/run.py``): the output may go away (a pipe closed early, as in ``| head``, or a
terminal that hangs up), a signal may end the run, and whatever happens, what the run
started is stopped by a cleanup that nothing can interrupt."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack
from types import FrameType
from typing import TextIO


class OutputGone(Exception):
    """Standard output went away: its pipe was closed (``make demo | head``) or its
    terminal hung up. The run stops there and cleans up without a word."""


def say(*lines: str) -> None:
    """Print ``lines`` at once (flushed, so a reader sees each step as it happens)."""
    try:
        for line in lines:
            print(line)
        sys.stdout.flush()
    except OSError as error:  # EPIPE from a closed pipe, EIO from a hung-up terminal
        raise OutputGone from error


def write(data: bytes) -> None:
    """:func:`say` for raw bytes (a log followed as it grows)."""
    try:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except OSError as error:
        raise OutputGone from error


def check_output() -> None:
    """Raise :class:`OutputGone` when standard output is a pipe whose reader has gone or a
    terminal that hung up, before anything is written to it: a run that has nothing more
    to say learns it too (Linux reports ``POLLERR`` on such a pipe)."""
    poller = select.poll()
    poller.register(sys.stdout.fileno(), 0)  # POLLERR and POLLHUP are always reported
    for _, events in poller.poll(0):
        if events & (select.POLLERR | select.POLLHUP):
            raise OutputGone


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived: the run stops and cleans up. A
    ``KeyboardInterrupt``, so no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Only the first signal counts: a second one (a double Ctrl-C, a hang-up right after
    # a SIGTERM) must not break into the cleanup.
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def run_in_foreground(
    body: Callable[[ExitStack], str],
    *,
    name: str,
    signal_status: Callable[[int], int] = lambda signum: 128 + signum,
) -> int:
    """Run ``body`` (it registers on the stack how to stop what it starts, and returns its
    last word); whatever happens, stop what it started. The cleanup writes nothing and
    runs with the signals ignored, so neither a closed pipe, a hung-up terminal nor a
    second Ctrl-C can leave a process or a temporary folder behind.

    The exit status: 0 when ``body`` returns or the output went away (nobody reads any
    more: stopping is the right answer); ``signal_status(signum)`` after SIGINT, SIGTERM
    or SIGHUP; 1 when ``body`` raises ``RuntimeError`` (said on stderr as ``{name}
    failed: …``)."""
    # Python ignores SIGPIPE already (a write to a closed pipe raises BrokenPipeError,
    # which say() turns into OutputGone); said here because the cleanup relies on it.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    for sig in SIGNALS:
        signal.signal(sig, _interrupt)  # SIGTERM and SIGHUP end the run like Ctrl-C
    stack = ExitStack()
    status, note = 0, ""
    try:
        try:
            note = body(stack)
        finally:
            for sig in SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            stack.close()
    except OutputGone:
        status, note = 0, ""
        _discard(sys.stdout)
    except Interrupted as signal_:
        status, note = signal_status(signal_.signum), f"interrupted ({signal_})"
    except RuntimeError as error:
        status, note = 1, f"{name} failed: {error}"
    if note:
        _tell(note, sys.stdout if status == 0 else sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            _discard(stream)
    return status


def _tell(message: str, stream: TextIO) -> None:
    """The last word, if anyone still reads ``stream``."""
    try:
        print(f"\n{message}", file=stream, flush=True)
    except OSError:
        _discard(stream)


def _discard(stream: TextIO) -> None:
    """Point ``stream`` at /dev/null, so the interpreter's flush at exit does not fail on
    what is still buffered (Python's recipe for a closed pipe)."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
