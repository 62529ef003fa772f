"""A Starlette app on uvicorn (one process, one asyncio event loop), for profiling under load.

- /cpu    cpu_endpoint:    burns CPU for about 5 ms on the loop
- /db     db_endpoint:     awaits a PostgreSQL query that takes 20 ms server-side (asyncpg pool)
- /block  block_endpoint:  the classic bug: a synchronous time.sleep(0.02) inside `async def`,
                           which stalls the event loop (and every other request) for 20 ms
- /health                  for readiness checks

Environment: PYEBPF_PG_DSN (postgresql:// URL).
"""
import contextlib
import os
import time

import asyncpg
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

PG_DSN = os.environ["PYEBPF_PG_DSN"]


def burn(seconds):
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        for i in range(200):
            x += i * i
    return x


async def health(request):
    return PlainTextResponse("ok")


async def cpu_endpoint(request):
    return PlainTextResponse(str(burn(0.005)))


async def db_endpoint(request):
    async with request.app.state.pool.acquire() as conn:
        count = await conn.fetchval("SELECT count(*) FROM pg_class, pg_sleep(0.02)")
    return PlainTextResponse(str(count))


async def block_endpoint(request):
    time.sleep(0.02)  # blocks the event loop: should be `await asyncio.sleep(0.02)`
    return PlainTextResponse("blocked")


@contextlib.asynccontextmanager
async def lifespan(app):
    app.state.pool = await asyncpg.create_pool(PG_DSN, min_size=4, max_size=4)
    try:
        yield
    finally:
        await app.state.pool.close()


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/cpu", cpu_endpoint),
        Route("/db", db_endpoint),
        Route("/block", block_endpoint),
    ],
    lifespan=lifespan,
)
