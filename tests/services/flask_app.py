"""A Flask app served by gunicorn sync workers, for profiling under load.

Each endpoint spends its time in one named view function, in one way:

- /cpu    cpu_view:    burns CPU for about 5 ms (pure Python)
- /db     db_view:     a PostgreSQL query that takes 20 ms server-side (psycopg 3, TCP)
- /fsync  fsync_view:  writes 256 KiB to the worker's journal file, fsyncs it, reads it back
- /sleep  sleep_view:  time.sleep(0.02)
- /health              for readiness checks

Environment: PYEBPF_PG_DSN (libpq connection string), PYEBPF_FSYNC_DIR (directory of the
journal files /fsync writes, one per worker process, kept open like a write-ahead log).
"""
import os
import time

import psycopg
from flask import Flask

app = Flask(__name__)

PG_DSN = os.environ["PYEBPF_PG_DSN"]
FSYNC_DIR = os.environ["PYEBPF_FSYNC_DIR"]
BLOCK = os.urandom(256 * 1024)

# Per worker process, opened on first use (after gunicorn forked the worker).
_connection = None
_journal = None
_writes = 0


def connection():
    global _connection
    if _connection is None or _connection.closed:
        _connection = psycopg.connect(PG_DSN, autocommit=True)
    return _connection


def burn(seconds):
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        for i in range(200):
            x += i * i
    return x


@app.route("/health")
def health():
    return "ok"


@app.route("/cpu")
def cpu_view():
    return str(burn(0.005))


@app.route("/db")
def db_view():
    with connection().cursor() as cur:
        cur.execute("SELECT pg_sleep(0.02), count(*) FROM pg_class")
        return str(cur.fetchone()[1])


def journal():
    global _journal
    if _journal is None:
        path = os.path.join(FSYNC_DIR, f"journal-{os.getpid()}.dat")
        _journal = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    return _journal


@app.route("/fsync")
def fsync_view():
    # A durable write, as a write-ahead log does it: write a block, fsync, read it back. The
    # journal wraps at 8 blocks (2 MiB).
    global _writes
    fd = journal()
    offset = (_writes % 8) * len(BLOCK)
    _writes += 1
    os.pwrite(fd, BLOCK, offset)
    os.fsync(fd)
    return str(len(os.pread(fd, len(BLOCK), offset)))


@app.route("/sleep")
def sleep_view():
    time.sleep(0.02)
    return "slept"
