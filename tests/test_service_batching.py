"""The micro-batcher on a real onnxruntime session (the stand-in model)."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
from _service_fixtures import CMY_CLASSES, build_standin, write_model

from service.batching import MicroBatcher
from service.config import Settings
from service.errors import InferenceTimeout, ModelNotReady, QueueFull
from service.predictor import Predictor


class Recording:
    """A real predictor that records the batch sizes it was asked to run."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.sizes: list[int] = []

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.sizes.append(len(batch))
        return self.predictor.run(batch)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    paths = [
        write_model(root / "rgb.onnx", build_standin()),
        write_model(root / "cmy.onnx", build_standin(classes=CMY_CLASSES)),
    ]
    return [Predictor.load(p, Settings(model_path=p)) for p in paths]


def _pixels(rgb: tuple[int, int, int]) -> np.ndarray:
    x = np.empty((16, 16, 3), dtype=np.uint8)
    x[...] = rgb
    return x


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_concurrent_requests_form_batches_and_keep_order(models):
    model = Recording(models[0])

    async def scenario():
        b = MicroBatcher(max_batch_size=8, max_delay_s=0.05, max_queue=64)
        b.start()
        requests = [b.submit(model, [_pixels(COLOURS[i % 3])], 5.0) for i in range(20)]
        results = await asyncio.gather(*requests)
        await b.close()
        return results

    results = asyncio.run(scenario())
    # 20 images, at most 8 per batch: 8 + 8 + 4 when they all arrive within the delay
    assert sum(model.sizes) == 20 and max(model.sizes) == 8 and len(model.sizes) == 3
    for i, rows in enumerate(results):
        assert int(np.argmax(rows[0]["probabilities"])) == i % 3  # each got its own row


def test_lone_request_does_not_wait_for_the_delay(models):
    async def scenario():
        b = MicroBatcher(max_batch_size=64, max_delay_s=5.0, max_queue=64)
        b.start()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await b.submit(models[0], [_pixels((0, 0, 255))], 10.0)
        elapsed = loop.time() - start
        await b.close()
        return elapsed

    assert asyncio.run(scenario()) < 1.0  # nothing else queued or announced: runs at once


def test_open_batch_waits_for_announced_images(models):
    model = Recording(models[0])

    async def scenario():
        b = MicroBatcher(max_batch_size=64, max_delay_s=5.0, max_queue=64)
        b.start()
        with b.expecting(1):  # another request is decoding its image
            first = asyncio.ensure_future(b.submit(model, [_pixels((255, 0, 0))], 10.0))
            await asyncio.sleep(0.1)
            assert not first.done() and b.depth == 1  # held back for the announced image
        second = await b.submit(model, [_pixels((0, 255, 0))], 10.0)
        rows = await first
        await b.close()
        return rows, second

    asyncio.run(scenario())
    assert model.sizes == [2]  # one batch of two, not two batches of one


def test_failed_announcement_releases_the_batch(models):
    async def scenario():
        b = MicroBatcher(max_batch_size=64, max_delay_s=5.0, max_queue=64)
        b.start()
        with contextlib.suppress(ValueError), b.expecting(1):
            first = asyncio.ensure_future(b.submit(models[0], [_pixels((255, 0, 0))], 10.0))
            await asyncio.sleep(0.05)
            raise ValueError("the announced image failed to decode")
        rows = await asyncio.wait_for(first, 1.0)  # released at once, not after 5 s
        await b.close()
        return rows

    assert len(asyncio.run(scenario())) == 1


def test_queue_bound_counts_whole_requests(models):
    async def scenario():
        b = MicroBatcher(max_batch_size=64, max_delay_s=0.3, max_queue=4)
        b.start()
        with b.expecting(1):
            first = asyncio.ensure_future(b.submit(models[0], [_pixels((255, 0, 0))] * 3, 5.0))
            await asyncio.sleep(0.05)  # 3 images wait for the announced one (300 ms delay)
            assert b.depth == 3
            with pytest.raises(QueueFull, match="3 of 4"):
                await b.submit(models[0], [_pixels((255, 0, 0))] * 2, 5.0)  # 3 + 2 > 4
        one_more = await b.submit(models[0], [_pixels((0, 255, 0))], 5.0)  # 3 + 1 fits
        rows = await first
        await b.close()
        return rows, one_more

    rows, one_more = asyncio.run(scenario())
    assert len(rows) == 3 and len(one_more) == 1


def test_timeout_and_close_drains(models):
    model = Recording(models[0])

    async def scenario():
        b = MicroBatcher(max_batch_size=64, max_delay_s=0.5, max_queue=64)
        b.start()
        with b.expecting(1):  # an image that never arrives keeps batches open for 0.5 s
            with pytest.raises(InferenceTimeout, match="0.05 s"):
                await b.submit(model, [_pixels((255, 0, 0))], 0.05)
            waiting = asyncio.ensure_future(b.submit(model, [_pixels((0, 0, 255))] * 2, 5.0))
            await asyncio.sleep(0.01)
            await b.close()  # does not wait out the delay: runs what is queued, then stops
        rows = await waiting
        with pytest.raises(ModelNotReady, match="shutting down"):
            await b.submit(model, [_pixels((0, 0, 255))], 5.0)
        return rows

    rows = asyncio.run(scenario())
    assert [int(np.argmax(r["probabilities"])) for r in rows] == [2, 2]
    assert model.sizes == [2]  # the timed-out image was dropped, never run


def test_batches_never_mix_models(models):
    rgb, cmy = Recording(models[0]), Recording(models[1])

    async def scenario():
        b = MicroBatcher(max_batch_size=16, max_delay_s=0.05, max_queue=64)
        b.start()
        results = await asyncio.gather(
            b.submit(rgb, [_pixels((255, 0, 0))] * 2, 5.0),
            b.submit(cmy, [_pixels((255, 255, 0))] * 3, 5.0),
        )
        await b.close()
        return results

    from_rgb, from_cmy = asyncio.run(scenario())
    assert rgb.sizes == [2] and cmy.sizes == [3]
    assert int(np.argmax(from_cmy[0]["probabilities"])) == 2  # yellow in (cyan, magenta, yellow)
