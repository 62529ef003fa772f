"""Python constructs whose frames must be named right: a generator, an asyncio coroutine, a
lambda, a decorated function, non-ASCII names, a native leaf, deep recursion. Each phase burns CPU for
SECONDS; prints "ready" first.
"""
import asyncio
import functools
import sys
import time


def spin(seconds):
    end = time.time() + seconds
    x = 0
    while time.time() < end:
        for i in range(2000):
            x += i
    return x


def numbers(seconds):
    end = time.time() + seconds
    while time.time() < end:
        yield spin(0.01)


def consume_generator(seconds):
    return sum(numbers(seconds))


async def coroutine_work(seconds):
    await asyncio.sleep(0)
    return spin(seconds)


def timed(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        return fn(*args)
    return wrapper


@timed
def decorated(seconds):
    return spin(seconds)


def calcul_énergie(seconds):
    return spin(seconds)


def 计算(seconds):
    return spin(seconds)


def read_clock(seconds):
    # Mostly inside clock_gettime (libc / vDSO): a native leaf outside the interpreter.
    end = time.time() + seconds
    while time.time() < end:
        time.time()
        time.time()


def recurse(depth, seconds):
    if depth == 0:
        return spin(seconds)
    return recurse(depth - 1, seconds)


if __name__ == "__main__":
    seconds = float(sys.argv[1])
    print("ready", flush=True)
    consume_generator(seconds)
    asyncio.run(coroutine_work(seconds))
    (lambda s: spin(s))(seconds)
    decorated(seconds)
    calcul_énergie(seconds)
    计算(seconds)
    read_clock(seconds)
    recurse(300, seconds)
