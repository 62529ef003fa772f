"""An aiohttp service for the asyncio task tests (tests/tests/tasks.rs), three handlers:
- /upstream awaits a GET to an upstream aiohttp server (this file, --role upstream) that
  answers after sleeping 40 ms;
- /compute runs ~4 ms of Python;
- /block calls time.sleep(0.01) inside `async def` (it holds the loop).
/stats gives what the handlers measured themselves (counts, seconds spent awaiting the
upstream, seconds blocked); /health answers once the server is up.
    python -m aiohttp_app --port P --role app --upstream-port U [--uvloop]
    python -m aiohttp_app --port U --role upstream
--live-tasks N (app role) keeps N more tasks alive, as long-poll handlers would be: each awaits
an event that a notifier sets every 1-3 s, or sleeps 0.5-2 s, in a loop (`cargo xtask bench tasks`).
"""
import argparse
import asyncio
import time

from aiohttp import ClientSession, web

DELAY = 0.040
STATS = {
    "upstream_requests": 0,
    "upstream_await_s": 0.0,
    "compute_requests": 0,
    "compute_s": 0.0,
    "compute_cpu_s": 0.0,
    "block_requests": 0,
    "block_s": 0.0,
}


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
    # Wall time in the handler's step (the task runs all along: on the CPU or waiting for it)
    # and the CPU time it burnt.
    t, cpu = time.monotonic(), time.thread_time()
    spin(4)  # compute-spin
    STATS["compute_s"] += time.monotonic() - t
    STATS["compute_cpu_s"] += time.thread_time() - cpu
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


async def long_poll(i, events):
    # Half wait for a notification, half poll on a timer: both kinds of long-lived waiters.
    while True:
        if i % 2:
            event = events[i % len(events)]
            await event.wait()
        else:
            await asyncio.sleep(0.5 + (i % 16) / 10)


async def notifier(events):
    n = 0
    while True:
        await asyncio.sleep(0.1)
        # One event in 20 a tick: each is set about every 2 s, and cleared for its next round.
        event = events[n % len(events)]
        event.set()
        event.clear()
        n += 1


def live_tasks(count):
    async def start(app):
        events = [asyncio.Event() for _ in range(20)]
        tasks = [asyncio.ensure_future(long_poll(i, events)) for i in range(count)]
        tasks.append(asyncio.ensure_future(notifier(events)))
        yield
        for t in tasks:
            t.cancel()

    return start


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
    p.add_argument("--live-tasks", type=int, default=0)
    args = p.parse_args()
    app = web.Application()
    app.router.add_get("/health", health)
    if args.role == "upstream":
        app.router.add_get("/delay", delay)
    else:
        app["upstream_url"] = "http://127.0.0.1:%d/delay" % args.upstream_port
        app.cleanup_ctx.append(open_session)
        if args.live_tasks:
            app.cleanup_ctx.append(live_tasks(args.live_tasks))
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
