"""run_units: the one submit-and-collect loop of transcode and eval (failures, fatal errors, progress)."""
from __future__ import annotations

import concurrent.futures as cf

import pytest

from pipeline.errors import OutputError
from pipeline.run.driver import InlineExecutor
from pipeline.run.units import run_units


def _work(u: int) -> int:
    if u == 3:
        raise ValueError("three is bad")
    if u == 5:
        raise OutputError("cannot write")
    return u * 10


@pytest.mark.parametrize("make", [InlineExecutor, lambda: cf.ThreadPoolExecutor(2)])
def test_a_failed_unit_is_reported_and_the_others_go_on(make):
    seen, ticks = {}, []
    with make() as executor:
        failed = run_units(executor, _work, [1, 2, 3, 4], lambda u, r: seen.__setitem__(u, r),
                           label=lambda u: f"unit {u}", weight=lambda u: u, progress=lambda d, t: ticks.append((d, t)))
    assert seen == {1: 10, 2: 20, 4: 40}
    assert [f.message for f in failed] == ["unit 3: ValueError: three is bad"] and failed[0].unit == 3
    assert sorted(d for d, _ in ticks)[-1] == 7 and {t for _, t in ticks} == {10}  # the failed unit never counts


def test_a_fatal_error_stops_an_in_process_run_at_once():
    calls = []

    def work(u: int) -> int:
        calls.append(u)
        return _work(u)

    with pytest.raises(OutputError):
        run_units(InlineExecutor(), work, [5, 1, 2], lambda u, r: None, label=str, fatal=(OutputError,))
    assert calls == [5]  # nothing submitted after the unwritable output


def test_an_error_in_on_result_cancels_the_rest():
    def boom(u: int, r: int) -> None:
        raise KeyError(u)

    with cf.ThreadPoolExecutor(1) as executor, pytest.raises(KeyError):
        run_units(executor, _work, [1, 2], boom, label=str)


def test_no_units_no_progress():
    assert run_units(InlineExecutor(), _work, [], lambda u, r: None, label=str, progress=True) == []
