"""An aiohttp service for the asyncio task tests (tests/tests/tasks.rs), three handlers:
- /upstream awaits a GET to an upstream aiohttp server (this file, --role upstream) that
  answers after sleeping 40 ms;
- /compute runs ~4 ms of Python;
- /block calls time.sleep(0.01) inside `async def` (it holds the loop).
/stats gives what the handlers measured themselves (counts, seconds spent awaiting the
upstream, seconds blocked); /health answers once the server is up.
    python -m aiohttp_app --port P --role app --upstream-port U [--uvloop]
    python -m aiohttp_app --port U --role upstream
"""
import argparse
import asyncio
import time

from aiohttp import ClientSession, web

DELAY = 0.040
STATS = {"upstream_requests": 0, "upstream_await_s": 0.0, "compute_requests": 0, "block_requests": 0, "block_s": 0.0}


def spin(ms):
    end = time.thread_time() + ms / 1000
    x = 0
    while time.thread_time() < end:
        x += 1
    return x


async def upstream(request):
    t = time.monotonic()
    async with request.app["session"].get(request.app["upstream_url"]) as resp:
        body = await resp.text()  # upstream-await
    STATS["upstream_await_s"] += time.monotonic() - t
    STATS["upstream_requests"] += 1
    return web.Response(text=body)


async def compute(request):
    spin(4)  # compute-spin
    STATS["compute_requests"] += 1
    return web.Response(text="computed")


async def block(request):
    t = time.monotonic()
    time.sleep(0.01)  # block-sleep
    STATS["block_s"] += time.monotonic() - t
    STATS["block_requests"] += 1
    return web.Response(text="blocked")


async def delay(request):
    await asyncio.sleep(DELAY)
    return web.Response(text="late")


async def health(request):
    return web.Response(text="ok")


async def stats(request):
    return web.json_response(STATS)


async def open_session(app):
    app["session"] = ClientSession()
    yield
    await app["session"].close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--role", choices=["app", "upstream"], required=True)
    p.add_argument("--upstream-port", type=int)
    p.add_argument("--uvloop", action="store_true")
    args = p.parse_args()
    app = web.Application()
    app.router.add_get("/health", health)
    if args.role == "upstream":
        app.router.add_get("/delay", delay)
    else:
        app["upstream_url"] = "http://127.0.0.1:%d/delay" % args.upstream_port
        app.cleanup_ctx.append(open_session)
        app.router.add_get("/upstream", upstream)
        app.router.add_get("/compute", compute)
        app.router.add_get("/block", block)
        app.router.add_get("/stats", stats)
    loop_factory = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    if loop_factory is not None:
        asyncio.set_event_loop(loop_factory())
    else:
        asyncio.set_event_loop(asyncio.new_event_loop())
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, loop=asyncio.get_event_loop())


if __name__ == "__main__":
    main()
