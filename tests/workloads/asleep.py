"""Two threads that never run once started: MainThread sleeps, lock-waiter waits on a lock
that is never released. Prints "ready" once both are blocked."""
import threading
import time

lock = threading.Lock()
lock.acquire()
threading.Thread(target=lock.acquire, name="lock-waiter", daemon=True).start()
time.sleep(0.05)
print("ready", flush=True)
time.sleep(120)
