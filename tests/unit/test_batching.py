import asyncio

from consumer.adapters.batching import Batcher


async def test_no_item_is_left_behind_when_a_flush_ends() -> None:
    """An item submitted while the last flush task is ending (after its queue looked empty,
    before its done-callback ran) is still flushed."""

    async def flush(items: list[int]) -> list[int]:
        return items

    batcher: Batcher[int, int] = Batcher(flush)

    async def caller(n: int, delay: int) -> int:
        for _ in range(delay):
            await asyncio.sleep(0)
        return await batcher.submit(n)

    for delay in range(1, 8):
        for first in range(1, 8):
            got = await asyncio.wait_for(
                asyncio.gather(caller(0, first), caller(1, first + delay)), 2
            )
            assert got == [0, 1]
