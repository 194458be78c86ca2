"""The link watcher's LISTEN connection has a liveness check (issue 20, point 16): a dead
connection is noticed and replaced, and a disconnect said while it was dead is still
heard (the links' states are read again on the new connection).

The dead peer is real: a TCP proxy between the watcher and PostgreSQL that stops forwarding
without closing anything (a server that froze, a NAT that forgot the connection). Its
kernel still acknowledges what the watcher sends, so neither TCP keepalives nor a user
timeout would ever notice: only the watcher's own check can."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from consumer.adapters.postgres.link_watcher import connect, watch_links
from consumer.domain.models import LinkState
from tests.plugins.environment import Env, wait_until


class FreezableProxy:
    """127.0.0.1:port -> PostgreSQL. `freeze()`: the connections open now stop forwarding,
    in both directions, and stay open; connections opened afterwards pass."""

    def __init__(self, database_url: str) -> None:
        self.target = conninfo_to_dict(database_url)
        self.database_url = database_url
        self.accepted = 0
        self._frozen: list[asyncio.Event] = []  # one per connection: set = frozen
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return make_conninfo(self.database_url, host="127.0.0.1", port=str(port))

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host = str(self.target.get("host") or "localhost")
        port = int(self.target.get("port") or 5432)
        if host.startswith("/"):  # a unix socket directory
            return await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        return await asyncio.open_connection(host, port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await self._upstream()
        self._writers += [writer, up_writer]
        frozen = asyncio.Event()
        self._frozen.append(frozen)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink, frozen))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, frozen: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if frozen.is_set():
                    await asyncio.Event().wait()  # holds it, forever, closing nothing
                sink.write(data)
                await sink.drain()

    def freeze(self) -> None:
        for frozen in self._frozen:
            frozen.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()


@contextlib.asynccontextmanager
async def watching(
    database_url: str, heard: list[tuple[str, LinkState]], **options: Any
) -> AsyncIterator[None]:
    task = asyncio.create_task(
        watch_links(database_url, lambda link, state, _: heard.append((link, state)), **options)
    )
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_dead_listen_connection_is_replaced_and_a_disconnect_still_heard(
    env: Env,
) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    other, other_refresh = env.account("other")
    other_link = await env.link(other, other_refresh, activity_id="act_2")
    proxy = FreezableProxy(env.database_url)
    proxied = await proxy.start()
    heard: list[tuple[str, LinkState]] = []
    try:
        async with watching(proxied, heard, retry_s=0.2, check_interval_s=1.0, check_timeout_s=1.0):
            await wait_until(lambda: (link_id, LinkState.ACTIVE) in heard, what="the first read")
            # Alive: a notice is heard as it is sent.
            env.query(
                "UPDATE calendar_links SET state = 'reauth_required', state_changed_at = now()"
                " WHERE id = %s RETURNING id",
                other_link,
            )
            await wait_until(
                lambda: (other_link, LinkState.REAUTH_REQUIRED) in heard, what="a live notice"
            )
            assert proxy.accepted == 1

            proxy.freeze()  # PostgreSQL, as the watcher sees it, is now a dead peer
            env.query(
                "UPDATE calendar_links SET state = 'disconnected', state_changed_at = now()"
                " WHERE id = %s RETURNING id",
                link_id,
            )
            # Noticed well within a minute (a generous deadline, not a measure of speed):
            # without the check, the watcher would wait on the frozen connection for good.
            await wait_until(
                lambda: (link_id, LinkState.DISCONNECTED) in heard,
                timeout_s=55,
                what="the disconnect heard through a new connection",
            )
            assert proxy.accepted >= 2  # the dead connection was replaced
    finally:
        await proxy.close()


async def test_the_listen_connection_asks_for_tcp_keepalives(env: Env) -> None:
    conn = await connect(env.database_url)
    try:
        parameters = conn.info.get_parameters()
    finally:
        await conn.close()
    assert {
        name: parameters.get(name)
        for name in ("keepalives_idle", "keepalives_interval", "keepalives_count")
    } == {"keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "3"}
    assert parameters.get("tcp_user_timeout") == "30000"
    assert parameters.get("connect_timeout") == "10"
