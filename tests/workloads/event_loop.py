"""An asyncio server and a select()-based sync server, whose waits are known by construction,
for SECONDS:

- MainThread runs an asyncio loop serving TCP requests on 127.0.0.1. Each request is handled
  by `handle`: "polite" requests await asyncio.sleep (the loop stays free), "block" requests
  call `stall_the_loop`, a coroutine that wrongly calls time.sleep (the loop is held up).
  Between requests the loop waits in its selector: idle.
- sync-server: a thread that waits for connections in select() on a listening socket, like
  a gunicorn sync worker, and answers each: idle while waiting.
- client: sends a request every 20 ms, alternating polite and block, and connects to the
  sync server every 100 ms.
Prints "ready" once both servers listen.
"""
import asyncio
import select
import socket
import sys
import threading
import time

SECONDS = float(sys.argv[1])
END = time.time() + SECONDS


async def stall_the_loop():
    time.sleep(0.015)  # blocks the event loop: the bug the profiler must point at


async def be_polite():
    await asyncio.sleep(0.015)


async def handle(reader, writer):
    while True:
        line = await reader.readline()
        if not line:
            break
        if line.strip() == b"block":
            await stall_the_loop()
        else:
            await be_polite()
        writer.write(b"done\n")
        await writer.drain()
    writer.close()


def sync_server(listener):
    while time.time() < END:
        readable, _, _ = select.select([listener], [], [], 0.5)
        if readable:
            conn, _ = listener.accept()
            conn.recv(16)
            conn.sendall(b"ok")
            conn.close()


def client(async_port, sync_port):
    s = socket.create_connection(("127.0.0.1", async_port))
    f = s.makefile("rb")
    n = 0
    while time.time() < END:
        s.sendall(b"block\n" if n % 2 else b"polite\n")
        f.readline()
        n += 1
        time.sleep(0.020)
        if n % 5 == 0:
            c = socket.create_connection(("127.0.0.1", sync_port))
            c.sendall(b"hi")
            c.recv(16)
            c.close()
    s.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async_port = server.sockets[0].getsockname()[1]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    threading.Thread(target=sync_server, args=(listener,), name="sync-server", daemon=True).start()
    threading.Thread(target=client, args=(async_port, listener.getsockname()[1]), name="client", daemon=True).start()
    print("ready", flush=True)
    await asyncio.sleep(max(0.0, END - time.time()))
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
