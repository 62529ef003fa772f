//! Event loops seen from a blocked thread's Python frames (userspace only): is the loop
//! polling for work (idle), or held up by a blocking call made by what it runs (a stall), and
//! which coroutine or callback made it?
//!
//! Works for asyncio's loop, whose Python frames are seen, and for loops written in C (uvloop),
//! seen through `asyncio.run`/`run_until_complete`. A blocked stack whose frames contain an
//! event loop's own frame is either the loop polling (nothing but selector frames below it,
//! in a poll-family syscall) or a stall, charged to the innermost coroutine frame (`co_flags`
//! has `CO_COROUTINE`, `CO_ITERABLE_COROUTINE` or `CO_ASYNC_GENERATOR`), else to the callback
//! below `Handle._run`.
use super::PyFrame;

/// What a blocked stack means for an event loop on its thread. Positions index the frames
/// given to [`loop_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopState {
    /// No event loop on the stack; `coroutine` when a coroutine is running anyway (driven by
    /// hand, or by a loop we do not know).
    NotLoop { coroutine: Option<usize> },
    /// The loop polling for events: nothing to run.
    Idle,
    /// The loop held up by what it runs; `culprit` is the coroutine or callback that made the
    /// call, when one can be told.
    Stalled { culprit: Option<usize> },
}

/// Reads a blocked stack (Python frames root first, `None` for frames that are not shown)
/// for an event loop. `polls`: the thread is blocked in a poll-family syscall.
pub fn loop_state(frames: &[Option<&PyFrame>], polls: bool) -> LoopState {
    let innermost_coroutine =
        |from: usize| (from..frames.len()).rev().find(|&i| frames[i].is_some_and(|f| f.coroutine));
    let Some(marker) = frames.iter().rposition(|f| f.is_some_and(is_loop_frame)) else {
        return LoopState::NotLoop { coroutine: innermost_coroutine(0) };
    };
    let below = &frames[marker + 1..];
    if below.is_empty() || below.iter().all(|f| f.is_some_and(is_selector_frame)) {
        return if polls { LoopState::Idle } else { LoopState::NotLoop { coroutine: None } };
    }
    // Blocked inside what the loop runs: name the innermost coroutine, else the callback the
    // loop called (the first frame below its own that is not the loop's dispatch).
    let callback = (marker + 1..frames.len()).find(|&i| !frames[i].is_some_and(is_loop_dispatch_frame));
    LoopState::Stalled { culprit: innermost_coroutine(marker + 1).or(callback) }
}

/// Whether `file` is `module` (`asyncio/base_events.py`) of the standard library or a package:
/// path separators are `/` on Linux, and the path may be relative or absolute.
fn is_module(file: &str, module: &str) -> bool {
    file == module || file.strip_suffix(module).is_some_and(|head| head.ends_with('/'))
}

/// The unqualified function name (`run` of `Runner.run`).
fn short_name(function: &str) -> &str {
    function.rsplit('.').next().unwrap_or(function)
}

/// An event loop's own frame, under which the loop polls and runs callbacks: asyncio's
/// `run_forever`/`_run_once`/`run_until_complete`, `asyncio.run`, `uvloop.run`.
pub fn is_loop_frame(f: &PyFrame) -> bool {
    let name = short_name(&f.function);
    (is_module(&f.file, "asyncio/base_events.py") && matches!(name, "_run_once" | "run_forever" | "run_until_complete"))
        || (is_module(&f.file, "asyncio/runners.py") && name == "run")
        || (is_module(&f.file, "uvloop/__init__.py") && name == "run")
}

/// The selector asyncio's loop polls through (`EpollSelector.select`...).
fn is_selector_frame(f: &PyFrame) -> bool {
    is_module(&f.file, "selectors.py") || is_module(&f.file, "asyncio/selector_events.py")
}

/// Frames by which a loop calls into a callback or task (`Handle._run`, `Task.__step` in the
/// pure-Python fallback): not the culprit of a stall.
fn is_loop_dispatch_frame(f: &PyFrame) -> bool {
    (is_module(&f.file, "asyncio/events.py") && short_name(&f.function) == "_run")
        || (is_module(&f.file, "asyncio/tasks.py")
            && matches!(short_name(&f.function), "__step" | "_Task__step" | "__step_run_and_handle_result"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, file: &str, coroutine: bool) -> PyFrame {
        PyFrame { function: function.into(), file: file.into(), line: Some(1), coroutine, first_line: 1 }
    }

    #[test]
    fn the_loop_polling_is_idle_and_a_call_under_it_is_a_stall() {
        let base = "/usr/lib/python3.12/asyncio/base_events.py";
        let run = frame("run", "/usr/lib/python3.12/asyncio/runners.py", false);
        let run_once = frame("BaseEventLoop._run_once", base, false);
        let select = frame("EpollSelector.select", "/usr/lib/python3.12/selectors.py", false);
        let dispatch = frame("Handle._run", "/usr/lib/python3.12/asyncio/events.py", false);
        let handler = frame("handler", "/srv/app.py", true);
        let helper = frame("blocking_helper", "/srv/app.py", false);

        let polling = [Some(&run), Some(&run_once), Some(&select)];
        assert_eq!(loop_state(&polling, true), LoopState::Idle);
        // Not in a poll: the loop's own frames, but not waiting for events.
        assert_eq!(loop_state(&polling, false), LoopState::NotLoop { coroutine: None });
        // A blocking call under a coroutine: charged to the coroutine, not the helper it called.
        let stall = [Some(&run), Some(&run_once), Some(&dispatch), Some(&handler), Some(&helper)];
        assert_eq!(loop_state(&stall, false), LoopState::Stalled { culprit: Some(3) });
        // A plain callback (no coroutine): the first frame below the dispatch.
        let callback = [Some(&run), Some(&run_once), Some(&dispatch), Some(&helper)];
        assert_eq!(loop_state(&callback, false), LoopState::Stalled { culprit: Some(3) });
        // No loop frame: a coroutine driven by hand is named, but nothing stalls.
        assert_eq!(loop_state(&[Some(&handler), Some(&helper)], false), LoopState::NotLoop { coroutine: Some(0) });
        assert_eq!(loop_state(&[None, Some(&helper)], true), LoopState::NotLoop { coroutine: None });
    }

    #[test]
    fn modules_match_whole_path_components() {
        assert!(is_module("asyncio/base_events.py", "asyncio/base_events.py"));
        assert!(is_module("/x/lib/asyncio/base_events.py", "asyncio/base_events.py"));
        assert!(!is_module("/x/myasyncio/base_events.py", "asyncio/base_events.py"));
    }
}
