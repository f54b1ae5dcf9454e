"""Encoding a shard in a child process, so a codec that crashes its process costs one sample.

A codec library can die on one input (a segfault, an abort, ``os._exit``, the OOM killer): in a
Dask worker that kills the worker, and the task is retried; in-process it kills the run. A retried
task (see :mod:`pipeline.run.task`) runs its samples here instead: a child Python process reads,
decodes and encodes them in order and streams each result back. When the child dies, the parent
knows exactly which sample and setting it was on (the first event it did not send), records that
pair as an error row, and starts a new child from the next one. Results are the same bytes as
in-process encoding, since the same code runs; only the process differs.

The child is ``python -m pipeline.run.isolation`` with this process's ``sys.path``; it reads a pickled
job on stdin and writes pickled events on its own copy of stdout (its fd 1 points at stderr, so
a library printing to stdout cannot corrupt the stream).
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Callable

from .events import SampleEvent, SampleFailed, SampleRead, SettingFailed, StreamDone, StreamFatal

if TYPE_CHECKING:
    from ..codecs.spec import CodecSpec
    from .task import ShardTask

#: child processes that may die in one shard before the task gives up (a broken codec, not one bad sample)
MAX_CRASHES = 10


def _crash_reason(returncode: int | None) -> str:
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _dumps(obj) -> bytes:
    """Pickle as Dask does (cloudpickle, when installed): a task Dask can ship, a child can read."""
    try:
        import cloudpickle

        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except ImportError:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _spawn() -> tuple[subprocess.Popen[bytes], IO[bytes], IO[bytes]]:
    """A child encoder and its stdin and stdout pipes."""
    env = dict(os.environ)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)  # Dask's setting slows image buffers 3x (see cluster.py)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.run.isolation"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)
    if proc.stdin is None or proc.stdout is None:  # never with PIPE; says so to the type checker
        raise RuntimeError("the child encoder has no pipes")
    return proc, proc.stdin, proc.stdout


@dataclass
class _Cursor:
    """Where the children are: the next sample ``i`` and setting ``j``, and whether sample ``i`` was read."""

    settings: int
    i: int = 0
    j: int = 0
    in_sample: bool = False

    def advance(self, event: SampleEvent) -> None:
        """Move past what ``event`` reports."""
        if isinstance(event, SampleFailed):
            self.i, self.j, self.in_sample = event.index + 1, 0, False
        elif isinstance(event, SampleRead):
            if event.index != self.i:
                self.i, self.j = event.index, 0
            self.in_sample = True
        else:  # SettingEncoded / SettingFailed for (i, j)
            self.i, self.j = event.index, event.setting + 1
            if self.j == self.settings:
                self.i, self.j, self.in_sample = self.i + 1, 0, False

    def crash_event(self, pending: list[CodecSpec], why: str) -> SampleEvent:
        """The error row for the pair a child died on: the setting it was encoding, or the sample it read."""
        if self.in_sample:
            return SettingFailed(self.i, self.j, f"{pending[self.j].canonical} crashed its process on this sample "
                                                 f"({why})")
        return SampleFailed(self.i, f"reading or decoding this sample crashed its process ({why})")


def _run_child(task: ShardTask, pending: list[CodecSpec], cursor: _Cursor,
               apply: Callable[[SampleEvent], None]) -> tuple[bool, int | None]:
    """One child from the cursor on, its events applied; (whether it finished, its exit status)."""
    proc, stdin, stdout = _spawn()
    finished = False
    try:
        try:
            stdin.write(_dumps((task, pending, (cursor.i, cursor.j))))
            stdin.close()
        except BrokenPipeError:  # died on start-up: read its status below
            pass
        while True:
            try:
                event = pickle.load(stdout)
            except EOFError:
                break
            if isinstance(event, StreamDone):
                finished = True
                break
            if isinstance(event, StreamFatal):
                raise RuntimeError(f"isolated encoder failed: {event.traceback}")
            apply(event)
            cursor.advance(event)
    except BaseException:  # Ctrl-C or a fatal error: the child must not outlive this attempt
        proc.kill()
        raise
    finally:
        stdout.close()
        if not finished and proc.poll() is None:
            try:
                proc.wait(timeout=10)  # EOF came first: give the exit status a moment to arrive
            except subprocess.TimeoutExpired:
                proc.kill()
        rc = proc.wait()
    return finished, rc


def run_isolated(task: ShardTask, pending: list[CodecSpec], apply: Callable[[SampleEvent], None]) -> int:
    """Run ``task``'s samples for the ``pending`` settings in child processes, feeding each event to
    ``apply``; a child's death becomes an error row for the pair it was on. Returns how many died."""
    cursor = _Cursor(len(pending))
    crashes = 0
    while cursor.i < len(task.refs):
        finished, rc = _run_child(task, pending, cursor, apply)
        if finished:
            return crashes
        crashes += 1
        why = _crash_reason(rc)
        if crashes > MAX_CRASHES:
            raise RuntimeError(f"encoding crashed its process {crashes} times in one shard (last: {why}); "
                               "the codec library looks broken, not one sample")
        event = cursor.crash_event(pending, why)
        apply(event)
        cursor.advance(event)
    return crashes


def main() -> None:
    """Child side: read (task, pending specs, start) on stdin, stream events on the saved stdout."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed to stdout from here on goes to stderr
    sys.stdout = sys.stderr
    try:
        from ..codecs import make_codec
        from ..codecs.runtime import use
        from .events import import_modules, sample_events

        task, pending, start = pickle.load(sys.stdin.buffer)
        import_modules(task.modules)
        with use(task.runtime):  # the run's settings, not the environment this child inherited
            codecs = [make_codec(s) for s in pending]
            # one image at a time: a crash is then pinned on the one sample that caused it
            for event in sample_events(task, pending, codecs, start, batch=False):
                pickle.dump(event, out, protocol=pickle.HIGHEST_PROTOCOL)
                out.flush()
        pickle.dump(StreamDone(), out)
    except Exception:  # noqa: BLE001 - a set-up error, reported to the parent as such
        pickle.dump(StreamFatal(traceback.format_exc(limit=5)), out)
    out.flush()
    out.close()


if __name__ == "__main__":
    main()
