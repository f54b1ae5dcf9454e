"""One way to run units of work (transcode shards, evaluated shards) on any executor.

Submit every unit, collect the results as they complete, advance one progress count, and turn a
unit that raised into a failure the caller reports while the other units go on. Retries are the
executor's (:func:`pipeline.run.cluster.dask_executor` retries a unit whose worker died; units are
idempotent, so a retry redoes only unfinished work); error rows are the units' own (a sample that
fails becomes a row, the unit goes on). ``fatal`` errors (an output that cannot be written) stop
everything: the in-process executor submits no further unit, and the rest are cancelled.
"""
from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

U = TypeVar("U")
R = TypeVar("R")

#: ``progress`` as a callable: ``progress(done, total)`` in the caller's units (samples, encodes)
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class UnitFailure(Generic[U]):
    """A unit that raised: the unit, what it is called in messages, and the exception."""

    unit: U
    label: str
    error: BaseException

    @property
    def message(self) -> str:
        return f"{self.label}: {type(self.error).__name__}: {self.error}"


class Progress:
    """A tqdm bar (``progress=True``), a ``progress(done, total)`` callable, or nothing."""

    def __init__(self, progress: bool | ProgressFn, total: int, unit: str, desc: str):
        self.done, self.total = 0, total
        self.fn = progress if callable(progress) else None
        self.bar = None
        if progress is True:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, desc=desc, smoothing=0.1, dynamic_ncols=True)

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.fn is not None:
            self.fn(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_units(executor: cf.Executor, fn: Callable[[U], R], units: Sequence[U], on_result: Callable[[U, R], None], *,
              label: Callable[[U], str], weight: Callable[[U], int] = lambda u: 1,
              progress: bool | ProgressFn = False, unit: str = "unit", desc: str = "",
              fatal: tuple[type[BaseException], ...] = ()) -> list[UnitFailure[U]]:
    """Run ``fn(u)`` for every unit; ``on_result(u, result)`` in completion order; the failed units returned.

    Progress counts ``weight(u)`` per finished unit (a failed unit does not advance it). A
    ``fatal`` exception, an interrupt, or an exception from ``on_result`` cancels the units not
    yet run and propagates.
    """
    if not units:
        return []
    bar = Progress(progress, sum(weight(u) for u in units), unit, desc)
    futures: dict[cf.Future, U] = {}
    failed: list[UnitFailure[U]] = []
    try:
        for u in units:
            fut = executor.submit(fn, u)
            futures[fut] = u
            if fatal and fut.done() and not fut.cancelled() and isinstance(fut.exception(), fatal):
                break  # an in-process run: no point running the other units
        for fut in cf.as_completed(futures):
            u = futures[fut]
            try:
                result = fut.result()
            except fatal:
                raise
            except Exception as exc:  # noqa: BLE001 - a whole unit failed: keep going, report at the end
                failed.append(UnitFailure(u, label(u), exc))
                continue
            on_result(u, result)
            bar.advance(weight(u))
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    finally:
        bar.close()
    return failed
