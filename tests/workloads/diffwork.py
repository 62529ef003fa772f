"""A fixed amount of CPU work in two functions, before and after a known change.

`diffwork.py before|after ROUNDS`: each round calls steady() (the same work in both variants)
and changed() (8 units of work before the change, 1 after). pyebpf diff of the two profiles
must put changed() on top.
"""
import sys


def steady():
    x = 0
    for i in range(40000):
        x += i
    return x


def changed(units):
    x = 0
    for i in range(units * 20000):
        x += i
    return x


def main():
    variant, rounds = sys.argv[1], int(sys.argv[2])
    units = 8 if variant == "before" else 1
    for _ in range(rounds):
        steady()
        changed(units)


main()
