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
asyncio's). With `tls`, the upstream serves TLS (a self-signed test certificate, below) and
the fetcher's stream is a TLS stream (its transport writes through an SSL protocol to the TCP
transport that holds the socket).
Usage: asyncio_tasks.py DURATION [uvloop] [tls] | asyncio_tasks.py upstream [tls]
"""
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time

DELAY = 0.040

# A self-signed certificate and its key for the upstream's TLS, for this test only
# (`openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500`).
TEST_CERT_AND_KEY = """\
-----BEGIN CERTIFICATE-----
MIIBgDCCASWgAwIBAgIUepJYQ9UbuhJPCC+RQnChMZpRxB0wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJMTI3LjAuMC4xMCAXDTI2MTIwNTAyMjI0N1oYDzIxMjYxMTEx
MDIyMjQ3WjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQ1A+REIg9R8d7M9cXNQIt9J3YPUPJ+QXjGc0eAOPphG7AMHoVTNfaQ
0Pus/IajK22vL7aVjZujh3O9Vi55LKUNo1MwUTAdBgNVHQ4EFgQUjbKOQgcYoZK4
DnraYMXlvIcaWkYwHwYDVR0jBBgwFoAUjbKOQgcYoZK4DnraYMXlvIcaWkYwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEAssfH2nNuUz7bx0RK1Dhm
+9mL/MnBHhi+jaoCmbuywLgCIQCaPWaAYbWT76/0JX2JT/nIYPh6cg53hGi1OwL2
Svreuw==
-----END CERTIFICATE-----
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgpn1K38Z1yfgYrlrV
Jx/VAh0zYQSehNaHFOiW9guGVH2hRANCAAQ1A+REIg9R8d7M9cXNQIt9J3YPUPJ+
QXjGc0eAOPphG7AMHoVTNfaQ0Pus/IajK22vL7aVjZujh3O9Vi55LKUN
-----END PRIVATE KEY-----
"""


def server_tls():
    with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
        f.write(TEST_CERT_AND_KEY)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f.name)
    os.unlink(f.name)
    return ctx


def client_tls():
    # The test's own self-signed upstream: nothing to verify.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


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


def run_upstream(tls):
    async def main():
        server = await asyncio.start_server(upstream_handler, "127.0.0.1", 0, ssl=server_tls() if tls else None)
        print(server.sockets[0].getsockname()[1], flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def fetch_upstream(port, tls, stats, stop):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls() if tls else None)
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


async def main(duration, tls):
    upstream = subprocess.Popen([sys.executable, __file__, "upstream"] + (["tls"] if tls else []), stdout=subprocess.PIPE)
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
        loop.create_task(fetch_upstream(port, tls, stats, first_half), name="fetcher"),
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
    options = sys.argv[2:]
    if sys.argv[1] == "upstream":
        run_upstream("tls" in options)
    elif "uvloop" in options:
        import uvloop

        uvloop.run(main(float(sys.argv[1]), "tls" in options))
    else:
        asyncio.run(main(float(sys.argv[1]), "tls" in options))
