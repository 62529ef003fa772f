//! Where asyncio keeps a task's state, per CPython version (64-bit; with the GIL, and
//! free-threaded 3.13t-3.15t).
//!
//! `TaskObj` and `FutureObj` are private structs of `Modules/_asynciomodule.c`: no header
//! declares them, so an `offsetof` probe like `cargo xtask gen-python-offsets` has nothing to
//! compile against. The numbers below were found in memory by `tests/probes/asyncio_layout.py`,
//! which creates a task awaiting a coroutine awaiting a future and locates each known object
//! inside the live Task, Future, coroutine and frame (run it with an interpreter to check or
//! add a version: it prints this table's fields). The integration tests check them again live
//! on every interpreter found, by reading tasks whose chains and states are known.
//!
//! Generator and frame fields follow the public layouts: 3.11+ keep a coroutine's frame inline
//! (`gi_iframe`) with a one-byte `gi_frame_state` before it; 3.8–3.10 point to a frame object.
//! A suspended coroutine's top of stack is what it awaits (CPython's own `_PyGen_yf`).

/// Offsets of one version; -1 where the version has no such field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncioLayout {
    pub minor: u8,
    /// `TaskObj.task_fut_waiter`: the future the task's coroutine waits on, or NULL.
    pub task_fut_waiter: i64,
    /// `TaskObj.task_coro`.
    pub task_coro: i64,
    /// `TaskObj.task_name`: a str, or (3.12+, until someone asks) an int n for `Task-n`.
    pub task_name: i64,
    /// `FutureObj.fut_state` (an enum int: PENDING 0, CANCELLED 1, FINISHED 2); a task is a
    /// future, so its own state is here too.
    pub future_state: i64,
    /// 3.11+: `gi_iframe`, the coroutine's `_PyInterpreterFrame`, inline.
    pub gen_iframe: i64,
    /// 3.11+: `gi_frame_state` (int8).
    pub gen_frame_state: i64,
    /// 3.8–3.10: `gi_frame`, a `PyFrameObject*` (NULL once finished).
    pub gen_frame_ptr: i64,
    /// Top of the frame's value stack: 3.11–3.13 `stacktop` (int, slots from
    /// `frame_localsplus`); 3.10 `f_stackdepth` (int, slots from `frame_valuestack`); 3.8–3.9
    /// `f_stacktop` (a pointer past the top slot, NULL while running).
    pub frame_stacktop: i64,
    /// The frame's locals: `_PyInterpreterFrame.localsplus` (3.11–3.13), `PyFrameObject.f_localsplus`
    /// (3.8–3.10). The first is a method's `self`.
    pub frame_localsplus: i64,
    /// 3.10: `PyFrameObject.f_valuestack`.
    pub frame_valuestack: i64,
    /// `PyWeakReference.wr_object`: a `WeakSet`'s items are weak references.
    pub weakref_object: i64,
    /// 3.14+: `_PyInterpreterFrame.stackpointer`, a pointer past the top of the value stack
    /// (whose slots are `_PyStackRef`s: tag bits in the low bits), replacing `stacktop`.
    pub frame_stackpointer: i64,
    /// Which slot below the top of a suspended coroutine's stack holds what it awaits: 1 (the
    /// top, CPython's `_PyGen_yf`) up to 3.14; 2 in 3.15, which keeps one more value above it.
    pub awaited_below_top: u64,
    /// The last `gi_frame_state` of a frame that can be read (created, suspended or running):
    /// `FRAME_EXECUTING`, 0 up to 3.14 (whose earlier states are negative); 3.15 renumbered
    /// them from `FRAME_CREATED` = 0 to `FRAME_EXECUTING` = 4 (`FRAME_CLEARED` = 5).
    pub frame_state_executing: i8,
    /// A free-threaded build's layout: its object header is 32 bytes (`ob_tid`, flags, mutex,
    /// GC bits, two reference counts, then `ob_type` at 24), every object field 16 further on.
    pub free_threaded: bool,
}

/// `PySetObject` (the same from 3.8 to 3.15): `fill`, `used`, `mask` (slots - 1) and the
/// `table` of `setentry {key, hash}`, after the object header.
const SET_MASK_PAST_HEADER: u64 = 16;
const SET_TABLE_PAST_HEADER: u64 = 24;
pub const SET_ENTRY_SIZE: usize = 16;
/// `PyListObject`: `ob_size` right after the object header, then `ob_item`.
const LIST_SIZE_PAST_HEADER: u64 = 0;
const LIST_ITEMS_PAST_HEADER: u64 = 8;
/// `sizeof(PyObject)`: with the GIL, and free-threaded.
const HEADER: u64 = 16;
const HEADER_FREE_THREADED: u64 = 32;

/// Future states (`fut_state`).
pub const STATE_PENDING: i32 = 0;

const fn layout(minor: u8, task: [i64; 4], generator: [i64; 3], frame: [i64; 3]) -> AsyncioLayout {
    AsyncioLayout {
        minor,
        task_fut_waiter: task[0],
        task_coro: task[1],
        task_name: task[2],
        future_state: task[3],
        gen_iframe: generator[0],
        gen_frame_state: generator[1],
        gen_frame_ptr: generator[2],
        frame_stacktop: frame[0],
        frame_localsplus: frame[1],
        frame_valuestack: frame[2],
        weakref_object: 16,
        frame_stackpointer: -1,
        awaited_below_top: 1,
        frame_state_executing: 0,
        free_threaded: false,
    }
}

/// Found by `tests/probes/asyncio_layout.py` with CPython 3.8.18, 3.9.18, 3.10.13, 3.11.7
/// (and Debian's 3.11), 3.12.1 and 3.13.0.
/// Fields: task [fut_waiter, coro, name, state], gen [iframe, frame_state, frame_ptr],
/// frame [stacktop, localsplus, valuestack].
/// 3.14 (the probe with Debian sid's 3.14): the future's and task's fields are 8 bytes further
/// on (name and coroutine agree with the process's `_AsyncioDebug`, compared live by
/// `debug_section`'s caller); the frame's `stacktop` became `stackpointer`, and `localsplus`
/// follows `owner` and `visited` (74, 75) at 80.
/// 3.15 (Debian sid's 3.15, checked live the same way): the 3.14 layout, with the frame states
/// renumbered and the awaited object one slot below the top of the stack.
/// 3.13t (the probe with the free-threaded 3.13.15t built by `cargo xtask setup-pythons`): the
/// task's, future's and coroutine's fields 16 bytes further on than 3.13's (the object header),
/// the frame's where they were (a frame is no object), `wr_object` after the longer header.
/// 3.14t (the probe with 3.14.7t, built from the archive's pool): 3.14's, shifted the same way;
/// the frame's `tlbc_index` (72) moves `return_offset`, `owner` and `visited` up to 76-79,
/// `localsplus` stays at 80.
/// 3.15t (the probe with 3.15.0rc1t, built the same way): 3.15's, shifted by the header.
const TABLE: [AsyncioLayout; 11] = [
    layout(8, [104, 112, 120, 72], [-1, -1, 16], [72, 360, -1]),
    layout(9, [144, 152, 160, 80], [-1, -1, 16], [72, 360, -1]),
    layout(10, [152, 160, 168, 88], [-1, -1, 16], [80, 352, 64]),
    layout(11, [128, 136, 144, 88], [80, 75, -1], [64, 72, -1]),
    layout(12, [128, 136, 144, 88], [72, 67, -1], [64, 72, -1]),
    layout(13, [112, 120, 128, 96], [72, 67, -1], [64, 72, -1]),
    AsyncioLayout { frame_stackpointer: 64, ..layout(14, [120, 128, 136, 104], [72, 67, -1], [-1, 80, -1]) },
    AsyncioLayout {
        frame_stackpointer: 64,
        awaited_below_top: 2,
        frame_state_executing: 4,
        ..layout(15, [120, 128, 136, 104], [72, 67, -1], [-1, 80, -1])
    },
    AsyncioLayout {
        weakref_object: 32,
        free_threaded: true,
        ..layout(13, [128, 136, 144, 112], [88, 83, -1], [64, 72, -1])
    },
    AsyncioLayout {
        frame_stackpointer: 64,
        weakref_object: 32,
        free_threaded: true,
        ..layout(14, [136, 144, 152, 120], [88, 83, -1], [-1, 80, -1])
    },
    AsyncioLayout {
        frame_stackpointer: 64,
        awaited_below_top: 2,
        frame_state_executing: 4,
        weakref_object: 32,
        free_threaded: true,
        ..layout(15, [136, 144, 152, 120], [88, 83, -1], [-1, 80, -1])
    },
];

/// The layout of CPython 3.`minor`, free-threaded or not; None for versions without one
/// (3.16+).
pub fn for_version(minor: u8, free_threaded: bool) -> Option<&'static AsyncioLayout> {
    TABLE.iter().find(|l| l.minor == minor && l.free_threaded == free_threaded)
}

impl AsyncioLayout {
    /// `sizeof(PyObject)`: where an object's own fields start.
    pub fn header(&self) -> u64 {
        if self.free_threaded { HEADER_FREE_THREADED } else { HEADER }
    }

    /// `PySetObject.mask`.
    pub fn set_mask(&self) -> u64 {
        self.header() + SET_MASK_PAST_HEADER
    }

    /// `PySetObject.table`.
    pub fn set_table(&self) -> u64 {
        self.header() + SET_TABLE_PAST_HEADER
    }

    /// `PyListObject.ob_size`.
    pub fn list_size(&self) -> u64 {
        self.header() + LIST_SIZE_PAST_HEADER
    }

    /// `PyListObject.ob_item`.
    pub fn list_items(&self) -> u64 {
        self.header() + LIST_ITEMS_PAST_HEADER
    }

    /// Is a `gi_frame_state` one of a frame that can be read (created, suspended or running),
    /// not completed or cleared?
    pub fn frame_alive(&self, state: i8) -> bool {
        state <= self.frame_state_executing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_has_one_frame_scheme() {
        for l in &TABLE {
            assert_eq!(l.gen_iframe >= 0, l.minor >= 11, "3.{}", l.minor);
            assert_eq!(l.gen_frame_ptr >= 0, l.minor <= 10, "3.{}", l.minor);
            assert_eq!(l.frame_valuestack >= 0, l.minor == 10, "3.{}", l.minor);
            // One way to find the top of a suspended frame's stack.
            assert_eq!(l.frame_stackpointer >= 0, l.frame_stacktop < 0, "3.{}", l.minor);
            assert!(l.gen_iframe < 0 || l.gen_frame_state < l.gen_iframe);
            // The task's fields follow the future's, in the order TaskObj declares them.
            assert!(l.future_state < l.task_fut_waiter && l.task_fut_waiter < l.task_coro && l.task_coro < l.task_name);
        }
        assert!(for_version(16, false).is_none() && for_version(16, true).is_none());
        // Free-threaded: every object field one header (16 bytes) further on, the frame's unmoved.
        for minor in [13, 14, 15] {
            shifted_by_the_header(for_version(minor, false).unwrap(), for_version(minor, true).unwrap());
        }
        let (gil, ft) = (for_version(13, false).unwrap(), for_version(13, true).unwrap());
        assert_eq!((gil.set_mask(), gil.set_table(), gil.list_items()), (32, 40, 24));
        assert_eq!((ft.set_mask(), ft.set_table(), ft.list_items()), (48, 56, 40));
    }

    fn shifted_by_the_header(gil: &AsyncioLayout, ft: &AsyncioLayout) {
        for (a, b) in [
            (gil.task_fut_waiter, ft.task_fut_waiter),
            (gil.task_coro, ft.task_coro),
            (gil.task_name, ft.task_name),
            (gil.future_state, ft.future_state),
            (gil.gen_iframe, ft.gen_iframe),
            (gil.gen_frame_state, ft.gen_frame_state),
            (gil.weakref_object, ft.weakref_object),
        ] {
            assert_eq!(b - a, 16, "3.{}t", gil.minor);
        }
        assert_eq!(
            (gil.frame_stacktop, gil.frame_localsplus, gil.frame_stackpointer),
            (ft.frame_stacktop, ft.frame_localsplus, ft.frame_stackpointer)
        );
        assert_eq!(
            (gil.awaited_below_top, gil.frame_state_executing),
            (ft.awaited_below_top, ft.frame_state_executing)
        );
    }
}
