"""Finds, in the running interpreter, the offsets pyebpf's asyncio reader uses
(profiler/src/python/asyncio/layout.rs), by locating known objects inside live
Task, Future, coroutine and frame objects with ctypes. The C structs of
Modules/_asynciomodule.c are private (no header to compile an offsetof probe
against), so their offsets are found the way the reader sees them: in memory.
Prints one line `name value` per offset; -1 for a field the version lacks.
"""
import asyncio
import ctypes
import sys
import weakref


def word(addr):
    return ctypes.c_uint64.from_address(addr).value


def ref(addr):
    # A 3.14+ frame's `_PyStackRef`s carry tag bits in the low bits (free-threaded builds tag
    # deferred references such as code objects): the object is the word with them cleared.
    return word(addr) & ~3


def i32(addr):
    return ctypes.c_int32.from_address(addr).value


def i8(addr):
    return ctypes.c_int8.from_address(addr).value


def offsets_of(obj, target, size=None):
    size = size or type(obj).__basicsize__
    return [o for o in range(16, size, 8) if word(id(obj) + o) == id(target)]


def one(found, what):
    assert len(found) == 1, (what, found)
    return found[0]


out = {}
v = sys.version_info[:2]


async def inner(fut):
    await fut


async def outer(fut):
    # Awaited with a value below it on the stack (depth 2), so the stack-depth field is
    # told apart from the flags that happen to hold 1.
    return [1, await inner(fut)]


async def main():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    coro = outer(fut)
    task = loop.create_task(coro, name="probe-task")
    name = task.get_name()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    tsize = type(task).__basicsize__
    out["task_loop"] = one(offsets_of(task, loop), "loop")
    out["task_coro"] = one(offsets_of(task, coro), "coro")
    out["task_name"] = one(offsets_of(task, name), "name")
    out["task_fut_waiter"] = one(offsets_of(task, fut), "fut_waiter")
    # Future state: PENDING 0, CANCELLED 1, FINISHED 2.
    pending, done, cancelled = loop.create_future(), loop.create_future(), loop.create_future()
    done.set_result(None)
    cancelled.cancel()
    fsize = type(pending).__basicsize__
    states = [
        o
        for o in range(16, fsize, 4)
        if (i32(id(pending) + o), i32(id(done) + o), i32(id(cancelled) + o)) == (0, 2, 1)
    ]
    out["future_state"] = one(states, "state")
    assert i32(id(task) + out["future_state"]) == 0
    # Coroutines: 3.11+ hold their frame inline (gi_iframe), 3.8–3.10 point to a frame object.
    code = coro.cr_code
    if v >= (3, 11):
        code_in_frame = 32 if v == (3, 11) else 0
        gsize = type(coro).__basicsize__
        hits = [o for o in range(16, gsize + 256, 8) if ref(id(coro) + o + code_in_frame) == id(code)]
        # 3.11 also has gi_code at 16, which the inline frame's f_code search may find first.
        hits = [o for o in hits if o + code_in_frame != 16 or v != (3, 11)]
        iframe = hits[0]
        out["gen_iframe"] = iframe
        out["gen_frame_ptr"] = -1
        # gi_frame_state: the int8 right before the frame's padding; suspended vs created.
        created = outer(fut)
        # FRAME_CREATED is -2 (3.11, 3.12) or -3 (3.13, 3.14), 0 from 3.15 (which renumbered
        # the states upwards); a suspended coroutine's state is a little above it.
        states = [
            o
            for o in range(16, iframe)
            if -3 <= i8(id(created) + o) <= 0 and i8(id(created) + o) < i8(id(coro) + o) <= i8(id(created) + o) + 4
        ]
        created.close()
        out["gen_frame_state"] = one(states, "frame_state")
        out["gen_state_created"] = i8(id(created) + out["gen_frame_state"]) if False else None
        # Top of the suspended frame's stack is the awaited object: find its slot, then the
        # field saying where the stack ends (3.11–3.13: int stacktop, slots from localsplus).
        inner_coro = coro.cr_await
        frame = id(coro) + iframe
        slot = [o for o in range(0, 512, 8) if ref(frame + o) == id(inner_coro)]
        assert slot, "awaited object on the stack"
        slot = slot[-1]
        if v >= (3, 14):
            # The awaited object is the top of the stack, or (3.15) one slot below it.
            for below in (1, 2):
                sp = [o for o in range(0, 128, 8) if word(frame + o) == frame + slot + 8 * below]
                if sp:
                    break
            out["frame_stackpointer"] = one(sp, "stackpointer")
            out["awaited_below_top"] = below
            out["frame_stacktop"] = -1
            # localsplus: the frame's first local, the argument `fut`.
            # (`fut` is on the value stack too, further on: the first hit.)
            out["frame_localsplus"] = [o for o in range(64, 128, 8) if ref(frame + o) == id(fut)][0]
        else:
            localsplus = 72
            index = (slot - localsplus) // 8 + 1
            top = [o for o in range(48, localsplus, 4) if i32(frame + o) == index]
            out["frame_stacktop"] = one(top, "stacktop")
            out["frame_localsplus"] = localsplus
            out["frame_stackpointer"] = -1
        out["frame_valuestack"] = -1
    else:
        f = coro.cr_frame
        out["gen_iframe"] = -1
        out["gen_frame_ptr"] = one(offsets_of(coro, f), "gi_frame")
        out["gen_frame_state"] = -1
        inner_coro = coro.cr_await
        fsz = type(f).__basicsize__
        # The value stack is after the frame header (f_localsplus); find the awaited slot.
        slot = [o for o in range(fsz - 8, fsz + 512, 8) if word(id(f) + o) == id(inner_coro)]
        assert slot, "awaited object on the stack"
        # The first hit: the memory after the stack's end belongs to other objects.
        slot_addr = id(f) + slot[0]
        if v <= (3, 9):
            out["frame_stacktop"] = one([o for o in range(16, fsz, 8) if word(id(f) + o) == slot_addr + 8], "f_stacktop")
            out["frame_valuestack"] = -1
        else:
            vs = [o for o in range(16, fsz, 8) if 0 <= slot_addr - word(id(f) + o) < 512 and word(id(f) + o) > id(f)]
            out["frame_valuestack"] = one(vs, "f_valuestack")
            depth = (slot_addr - word(id(f) + vs[0])) // 8 + 1
            out["frame_stacktop"] = one([o for o in range(16, fsz, 4) if i32(id(f) + o) == depth and o != vs[0]], "f_stackdepth")
        # f_localsplus: the frame's first local (here the argument `fut`).
        out["frame_localsplus"] = one([o for o in range(16, fsz, 8) if word(id(f) + o) == id(fut)], "f_localsplus")
        out["frame_stackpointer"] = -1
    # weakref.ref → referent, and a set's table (the reader walks WeakSet.data).
    class K:
        pass

    k = K()
    r = weakref.ref(k)
    out["weakref_object"] = one(offsets_of(r, k), "wr_object")
    fut.set_result(None)
    await task


asyncio.run(main())
out.pop("gen_state_created", None)
for k, val in out.items():
    print(k, val)
