"""The step loop's garbage-collector setting: raised once, never lowered, switchable off."""

import gc

import pytest

from floorline.engine.gc_tuning import LOOP_THRESHOLD0, tune_gc_for_step_loop


@pytest.fixture
def restore_gc():
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def test_raises_the_default_threshold(restore_gc, monkeypatch):
    monkeypatch.delenv("FLOORLINE_GC_THRESHOLD", raising=False)
    gc.set_threshold(700, 10, 10)
    assert tune_gc_for_step_loop()
    assert gc.get_threshold() == (LOOP_THRESHOLD0, 10, 10)
    assert not tune_gc_for_step_loop()  # already there: a second engine changes nothing


def test_never_lowers_a_higher_threshold(restore_gc, monkeypatch):
    monkeypatch.delenv("FLOORLINE_GC_THRESHOLD", raising=False)
    gc.set_threshold(10 * LOOP_THRESHOLD0, 5, 5)
    assert not tune_gc_for_step_loop()
    assert gc.get_threshold() == (10 * LOOP_THRESHOLD0, 5, 5)


def test_switched_off_by_the_environment(restore_gc, monkeypatch):
    monkeypatch.setenv("FLOORLINE_GC_THRESHOLD", "0")
    gc.set_threshold(700, 10, 10)
    assert not tune_gc_for_step_loop()
    assert gc.get_threshold() == (700, 10, 10)
