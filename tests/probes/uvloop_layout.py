"""Checks, in a running interpreter with uvloop, what pyebpf's stream reader assumes about
uvloop's transports (profiler/src/python/asyncio/transport.rs): among the first words after
a transport's object header is a `uv_handle_t*` whose `data` points back at the transport and
whose `type` is UV_TCP (12) or UV_NAMED_PIPE (7), and the socket's descriptor is the stream
handle's `io_watcher.fd`, at 184. Memory is read through /proc/self/mem, so a wrong guess
reads as an error, not a crash. Prints one line per transport and exits 1 on a mismatch.
"""
import asyncio
import os
import socket
import struct
import sys
import tempfile

import uvloop

HEADER = 32 if getattr(sys, "_is_gil_enabled", lambda: True)() is False else 16
SEARCH_WORDS = 8
UV_TYPES = {7: "UV_NAMED_PIPE", 12: "UV_TCP"}
UV_STREAM_FD = 184

mem = os.open("/proc/self/mem", os.O_RDONLY)


def read(addr, n):
    try:
        return os.pread(mem, n, addr)
    except OSError:
        return None


def word(addr):
    b = read(addr, 8)
    return None if b is None or len(b) < 8 else struct.unpack("<Q", b)[0]


def check(name, transport):
    obj = id(transport)
    fd = transport.get_extra_info("socket").fileno()
    found = []
    for i in range(SEARCH_WORDS):
        p = word(obj + HEADER + 8 * i)
        if not p or p % 8:
            continue
        head = read(p, 20)
        if head is None or len(head) < 20:
            continue
        data, loop, kind = struct.unpack("<QQI", head)
        if data == obj and loop and kind in UV_TYPES:
            found.append((HEADER + 8 * i, kind, struct.unpack("<i", read(p + UV_STREAM_FD, 4))[0]))
    ok = len(found) == 1 and found[0][2] == fd
    print(f"{name}: {type(transport).__module__}.{type(transport).__qualname__} fd {fd}, handles found "
          f"{[(off, UV_TYPES[k], f) for off, k, f in found]} {'ok' if ok else 'MISMATCH'}")
    return ok


async def main():
    ok = True
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    ok &= check("tcp", writer.transport)
    path = os.path.join(tempfile.mkdtemp(), "s")
    userver = await asyncio.start_unix_server(lambda r, w: None, path)
    _, uwriter = await asyncio.open_unix_connection(path)
    ok &= check("unix", uwriter.transport)
    writer.close()
    uwriter.close()
    server.close()
    userver.close()
    return ok


print(f"uvloop {uvloop.__version__}, Python {sys.version.split()[0]}")
# uvloop.run is 0.18+.
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
sys.exit(0 if asyncio.run(main()) else 1)
