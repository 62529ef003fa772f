"""One thread burning CPU in `burn` forever, never making a syscall (so a preemption finds it
in user code). Prints "ready" first."""


def burn():
    n = 0
    while True:
        n += 1


print("ready", flush=True)
burn()
