"""Burns CPU for about 0.3 s in a named function, then exits."""
import time


def short_lived_burn():
    end = time.time() + 0.3
    x = 0
    while time.time() < end:
        x += 1
    return x


short_lived_burn()
