"""Decode admission parts without a server: thread count, the pixel budget, the deadline."""

from __future__ import annotations

import threading
import time

import pytest

from service.admission import Deadline, DecodeBudget, decode_threads
from service.config import Settings
from service.errors import InferenceTimeout


def test_decode_threads_do_not_grow_with_the_host(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert decode_threads(Settings()) == 4
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert decode_threads(Settings()) == 2
    assert decode_threads(Settings(preprocess_threads=16)) == 16


def test_decode_budget_reserves_and_releases_across_threads():
    budget = DecodeBudget(100)
    assert budget.try_reserve(60) and not budget.try_reserve(41) and budget.try_reserve(40)
    threads = [threading.Thread(target=budget.release, args=(10,)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.in_use == 0 and budget.try_reserve(100)


def test_deadline_counts_down_then_raises_504():
    deadline = Deadline.start(0.05)
    assert 0 < deadline.remaining() <= 0.05
    time.sleep(0.06)
    with pytest.raises(InferenceTimeout, match="0.05 s"):
        deadline.remaining()
