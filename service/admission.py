"""Admission control for decoding: what a request may cost is known from the image headers.

Decoding is the expensive, memory-hungry step, so it is admitted before it starts:

1. The headers of all images are parsed (one small "probe" thread, never behind decodes):
   an image over ``max_image_pixels``, or a request whose images sum to more than
   ``max_request_pixels``, gets 413 without a pixel decoded.
2. A full inference queue gives 503 now, not after decoding.
3. The request reserves its pixels in the service-wide :class:`DecodeBudget`
   (``max_decode_pixels``, counting images decoding or waiting for a decode thread); a request
   that does not fit gets 503 with Retry-After at once. Each image's pixels are returned when
   its decode really ends (in the decode thread, or when a decode that never started is
   cancelled), not when the request gives up, so the budget bounds memory in use.
4. Decoding runs in a bounded pool (``preprocess_threads``, default min(CPUs, 4)) under the
   request's :class:`Deadline`, which then also bounds the wait for inference.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from service.batching import MicroBatcher
from service.config import Settings
from service.errors import DecodeBusy, InferenceTimeout, ServiceError, TooManyPixels
from service.preprocessing import (
    PreprocessSpec,
    check_resized_pixels,
    open_image,
    opened_to_input,
)
from service.uploads import Upload

T = TypeVar("T")
MAX_DEFAULT_DECODE_THREADS = 4


def decode_threads(settings: Settings) -> int:
    """``preprocess_threads``, or min(CPU count, 4) when it is 0 (automatic)."""
    return settings.preprocess_threads or min(os.cpu_count() or 1, MAX_DEFAULT_DECODE_THREADS)


@dataclass(frozen=True)
class Deadline:
    """A request's time limit, started when its body has been read."""

    timeout_s: float
    end: float

    @classmethod
    def start(cls, timeout_s: float) -> Deadline:
        return cls(timeout_s, time.monotonic() + timeout_s)

    def remaining(self) -> float:
        """Seconds left; InferenceTimeout (504) when none are."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self) -> InferenceTimeout:
        return InferenceTimeout(f"no answer within the request timeout of {self.timeout_s:g} s")


class DecodeBudget:
    """Pixels admitted for decoding across the service; reserve on the loop, release anywhere."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._in_use = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        return self._in_use

    def try_reserve(self, pixels: int) -> bool:
        """Take ``pixels`` if they fit now; never waits."""
        with self._lock:
            if self._in_use + pixels > self.capacity:
                return False
            self._in_use += pixels
            return True

    def release(self, pixels: int) -> None:
        with self._lock:
            self._in_use -= pixels


@dataclass(frozen=True)
class _Probed:
    upload: Upload
    image: Image.Image
    pixels: int


class Admission:
    """Probe, admit and decode the images of a request (see the module docstring)."""

    def __init__(self, settings: Settings, batcher: MicroBatcher) -> None:
        self.settings = settings
        self.batcher = batcher
        self.budget = DecodeBudget(settings.max_decode_pixels)
        self._decoders = ThreadPoolExecutor(decode_threads(settings), "oltr-decode")
        self._prober = ThreadPoolExecutor(1, "oltr-probe")

    def close(self) -> None:
        self._prober.shutdown(wait=True)
        self._decoders.shutdown(wait=True, cancel_futures=True)

    async def decode(
        self, uploads: Sequence[Upload], spec: PreprocessSpec, deadline: Deadline
    ) -> list[np.ndarray]:
        """Model inputs for ``uploads``, one per file, or the 4xx/5xx that refuses them."""
        probed = await self._run(self._prober, self._probe_all, uploads, spec)
        total = sum(p.pixels for p in probed)
        if total > self.settings.max_request_pixels:
            raise TooManyPixels(
                f"the {len(probed)} images of this request have {total} pixels together; the "
                f"limit is {self.settings.max_request_pixels} per request"
            )
        self.batcher.ensure_room(len(probed))
        if not self.budget.try_reserve(total):
            raise DecodeBusy(
                f"decoding capacity is taken ({self.budget.in_use} of {self.budget.capacity} "
                f"pixels in flight; this request needs {total}); retry shortly"
            )
        futures = [self._submit_decode(p, spec) for p in probed]
        try:
            with self.batcher.expecting(len(futures)):
                async with asyncio.timeout(deadline.remaining()):
                    return list(await asyncio.gather(*map(asyncio.wrap_future, futures)))
        except TimeoutError as err:
            raise deadline.expired() from err
        finally:
            for future in futures:
                future.cancel()  # decodes not started yet never run (their pixels return)

    def _probe_all(self, uploads: Sequence[Upload], spec: PreprocessSpec) -> list[_Probed]:
        limit = self.settings.max_image_pixels
        probed = []
        for upload in uploads:
            with _naming(upload):
                image = open_image(upload.data, max_pixels=limit)
                check_resized_pixels(image.size, spec, max_pixels=limit)
                probed.append(_Probed(upload, image, image.size[0] * image.size[1]))
        return probed

    def _submit_decode(self, probed: _Probed, spec: PreprocessSpec) -> Future[Any]:
        limit = self.settings.max_image_pixels

        def work() -> np.ndarray:
            with _naming(probed.upload):
                return opened_to_input(probed.image, probed.upload.data, spec, max_pixels=limit)

        future = self._decoders.submit(contextvars.copy_context().run, work)
        future.add_done_callback(lambda _: self.budget.release(probed.pixels))
        return future

    @staticmethod
    async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(pool, call)


@contextmanager
def _naming(upload: Upload) -> Iterator[None]:
    """Prefix the file name to a ServiceError raised inside (``file 'a.png': ...``)."""
    try:
        yield
    except ServiceError as err:
        if upload.filename is not None:
            err.message = f"file {upload.filename!r}: {err.message}"
        raise
