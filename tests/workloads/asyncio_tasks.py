"""asyncio workload for the task tests (tests/tests/tasks.rs): one event loop running, in a
first half,
- `fetcher`: sequential requests to an upstream (a child process, same interpreter) that
  answers each after sleeping DELAY; it awaits a stream (the client measures each round trip
  and the upstream reports how long it really slept);
and in the second half (so that the fetcher's waits are not lengthened by a busy loop)
- `compute-1..3`: ~4 ms of Python each, then back to the loop (saturates it: while one runs the
  others are ready);
and all along
- `gatherer`: `asyncio.gather` of two children; `grouper` (3.11+): a TaskGroup with a child;
- `event-waiter`: waits on an asyncio.Event the whole run.
Prints "ready", waits for a line on stdin, runs DURATION seconds, prints its counts as JSON.
With `uvloop`, the loop is uvloop's (its transports are libuv handles; the upstream keeps
asyncio's).
Usage: asyncio_tasks.py DURATION [uvloop] | asyncio_tasks.py upstream
"""
import asyncio
import json
import subprocess
import sys
import time

DELAY = 0.040


async def upstream_handler(reader, writer):
    while True:
        line = await reader.readline()
        if not line:
            break
        t = time.monotonic()
        await asyncio.sleep(DELAY)
        writer.write(b"%f\n" % (time.monotonic() - t))
        await writer.drain()
    writer.close()


def run_upstream():
    async def main():
        server = await asyncio.start_server(upstream_handler, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def fetch_upstream(port, stats, stop):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while not stop.is_set():
        t = time.monotonic()
        writer.write(b"get\n")
        slept = await reader.readline()  # await-upstream
        stats["upstream_round_trip_s"] += time.monotonic() - t
        stats["upstream_slept_s"] += float(slept)
        stats["upstream_requests"] += 1
    writer.close()


def spin(ms):
    end = time.thread_time() + ms / 1000
    x = 0
    while time.thread_time() < end:
        x += 1
    return x


async def compute(stats, stop):
    while not stop.is_set():
        spin(4)  # compute-spin
        stats["compute_steps"] += 1
        await asyncio.sleep(0)


async def gather_child(stop):
    while not stop.is_set():
        await asyncio.sleep(0.05)  # gather-child-sleep


async def parent_gather(stop):
    await asyncio.gather(gather_child(stop), gather_child(stop))  # gather-await


async def group_child(stop):
    while not stop.is_set():
        await asyncio.sleep(0.05)  # group-child-sleep


async def parent_group(stop):
    async with asyncio.TaskGroup() as tg:
        tg.create_task(group_child(stop), name="group-child")


async def event_waiter(event):
    await event.wait()  # event-wait


async def main(duration):
    upstream = subprocess.Popen([sys.executable, __file__, "upstream"], stdout=subprocess.PIPE)
    port = int(upstream.stdout.readline())
    print("ready", flush=True)
    sys.stdin.readline()
    stats = {"upstream_requests": 0, "upstream_round_trip_s": 0.0, "upstream_slept_s": 0.0, "compute_steps": 0,
             "upstream_port": port}
    stop = asyncio.Event()
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    first_half = asyncio.Event()
    tasks = [
        loop.create_task(fetch_upstream(port, stats, first_half), name="fetcher"),
        loop.create_task(parent_gather(stop), name="gatherer"),
        loop.create_task(event_waiter(event), name="event-waiter"),
    ]
    if sys.version_info >= (3, 11):
        tasks.append(loop.create_task(parent_group(stop), name="grouper"))
    started = time.monotonic()
    await asyncio.sleep(duration / 2)
    first_half.set()
    await tasks[0]
    stats["fetch_seconds"] = time.monotonic() - started
    tasks += [loop.create_task(compute(stats, stop), name="compute-%d" % i) for i in (1, 2, 3)]
    await asyncio.sleep(duration / 2)
    stop.set()
    event.set()
    await asyncio.gather(*tasks)
    stats["seconds"] = time.monotonic() - started
    upstream.kill()
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "upstream":
        run_upstream()
    elif sys.argv[2:] == ["uvloop"]:
        import uvloop

        uvloop.run(main(float(sys.argv[1])))
    else:
        asyncio.run(main(float(sys.argv[1])))
