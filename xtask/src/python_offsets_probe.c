/*
 * Offset probe for `cargo xtask gen-python-offsets` (see python_offsets.rs).
 *
 * Compiled once per CPython minor version against that version's own headers:
 *
 *     cc -DPy_BUILD_CORE -I<inc> -I<inc>/internal python_offsets_probe.c
 *
 * (for 3.13+ also linked against libpython, see PROBE_LINKED_LIBPYTHON below),
 * then run. It prints one `name value` line per PyOffsets field, -1 for a field
 * that this version does not have, and `# ...` lines that the generator copies
 * into the generated table as comments. Anything it cannot vouch for makes it
 * fail (compile error, or a message on stderr and exit status 1), so a new
 * CPython layout breaks generation instead of producing a wrong table.
 *
 * The profiler reads these structures from outside the process with a plain
 * memory read and no DWARF, so besides offsets this file pins the field sizes
 * that the reader assumes (static asserts below).
 */

/* The internal headers refuse to compile without it; the generator also passes it. */
#ifndef Py_BUILD_CORE
#define Py_BUILD_CORE
#endif

#include <Python.h>
#include <frameobject.h>

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if PY_MAJOR_VERSION != 3 || PY_MINOR_VERSION < 8
#error "the probe supports CPython 3.8 and later"
#endif

/*
 * Where the interpreter-internal structs live moved between versions:
 * 3.8 keeps _PyRuntimeState and PyInterpreterState in pycore_pystate.h;
 * 3.9 split them into pycore_runtime.h / pycore_interp.h;
 * 3.11 moved the frame the eval loop works on to pycore_frame.h.
 */
#if PY_MINOR_VERSION == 8
#include "internal/pycore_pystate.h"
#else
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#endif
#if PY_MINOR_VERSION >= 11
#include "internal/pycore_frame.h"
#endif

#define FIELD(name, value) printf("%s %lld\n", (name), (long long)(value))
#define ABSENT(name) FIELD((name), -1)
#define SIZEOF_MEMBER(type, member) sizeof(((type *)0)->member)

/*
 * Sizes the out-of-process reader hard-codes. A version that changes one of
 * these needs a reader change, not just new offsets.
 */
_Static_assert(sizeof(void *) == 8, "only 64-bit targets are supported");
_Static_assert(SIZEOF_MEMBER(PyThreadState, thread_id) == 8, "pthread_t is read as u64");
_Static_assert(SIZEOF_MEMBER(PyCodeObject, co_firstlineno) == 4, "co_firstlineno is read as i32");
_Static_assert(SIZEOF_MEMBER(PyCodeObject, co_argcount) == 4, "co_argcount is read as i32");
_Static_assert(SIZEOF_MEMBER(PyCodeObject, co_flags) == 4, "co_flags is read as i32");
_Static_assert(SIZEOF_MEMBER(PyASCIIObject, length) == 8, "str length is read as i64");
_Static_assert(SIZEOF_MEMBER(PyASCIIObject, state) == 4, "str state is read as a u32 word");
_Static_assert(SIZEOF_MEMBER(PyVarObject, ob_size) == 8, "ob_size is read as i64");
#if PY_MINOR_VERSION >= 11
_Static_assert(SIZEOF_MEMBER(PyThreadState, native_thread_id) == 8, "native tid is read as u64");
_Static_assert(SIZEOF_MEMBER(_PyInterpreterFrame, owner) == 1, "frame owner is read as u8");
_Static_assert(SIZEOF_MEMBER(PyCodeObject, _co_firsttraceable) == 4, "read as i32");
#endif

/*
 * Locates one of the PyASCIIObject.state bitfields, whose layout offsetof
 * cannot describe: `o` is a zeroed object in which only that field has been set
 * to all ones. The field's bits must lie inside the 32-bit state word (read in
 * native byte order, as the profiler reads it) and be contiguous.
 */
static void state_bits(const char *field, const PyASCIIObject *o, const char *shift_name,
                       const char *mask_name)
{
    const size_t state = offsetof(PyASCIIObject, state);
    const unsigned char *bytes = (const unsigned char *)o;
    for (size_t i = 0; i < sizeof(*o); i++) {
        if (bytes[i] != 0 && (i < state || i >= state + 4)) {
            fprintf(stderr, "state.%s touched byte %zu outside the state word\n", field, i);
            exit(1);
        }
    }
    uint32_t word;
    memcpy(&word, bytes + state, sizeof(word));
    if (word == 0) {
        fprintf(stderr, "state.%s: setting the field changed no bit\n", field);
        exit(1);
    }
    int shift = __builtin_ctz(word);
    uint32_t mask = word >> shift;
    if ((mask & (mask + 1)) != 0) {
        fprintf(stderr, "state.%s: bits 0x%x are not contiguous\n", field, word);
        exit(1);
    }
    FIELD(shift_name, shift);
    if (mask_name != NULL) {
        FIELD(mask_name, mask);
    } else if (mask != 1) {
        fprintf(stderr, "state.%s: expected a one-bit flag, got mask 0x%x\n", field, mask);
        exit(1);
    }
}

/*
 * Sets bitfield `f` of a zeroed object to all ones. Decrementing an unsigned
 * bitfield from 0 wraps to its maximum, which avoids spelling out its width.
 */
#define STATE_BITS(f, shift_name, mask_name)                  \
    do {                                                      \
        PyASCIIObject o;                                      \
        memset(&o, 0, sizeof(o));                             \
        o.state.f = 0;                                        \
        o.state.f--;                                          \
        state_bits(#f, &o, (shift_name), (mask_name));        \
    } while (0)

/*
 * 3.13 embeds _Py_DebugOffsets at the start of _PyRuntime for out-of-process
 * tools. When linked against the real libpython, compare what the library was
 * built with (an initialized global, so no Py_Initialize needed) against the
 * offsetof values from these headers: a mismatch means the headers do not
 * describe that build, or the probe maps a field to the wrong member.
 */
#if PY_MINOR_VERSION >= 13
static int debug_mismatches;
static int debug_checked;

static void debug_check(const char *what, uint64_t debug, long long ours)
{
    debug_checked++;
    if ((long long)debug != ours) {
        fprintf(stderr, "_Py_DebugOffsets.%s = %llu but offsetof gives %lld\n", what,
                (unsigned long long)debug, ours);
        debug_mismatches++;
    }
}

#define DEBUG_CHECK(section, member, ours) \
    debug_check(#section "." #member, _PyRuntime.debug_offsets.section.member, (long long)(ours))

static void check_debug_offsets(void)
{
#ifdef PROBE_LINKED_LIBPYTHON
    const _Py_DebugOffsets *d = &_PyRuntime.debug_offsets;
    if (memcmp(d->cookie, _Py_Debug_Cookie, sizeof(d->cookie)) != 0) {
        fprintf(stderr, "_PyRuntime does not start with the _Py_DebugOffsets cookie\n");
        exit(1);
    }
    if (d->version != PY_VERSION_HEX) {
        fprintf(stderr, "linked libpython is 0x%llx but the headers are 0x%x\n",
                (unsigned long long)d->version, PY_VERSION_HEX);
        exit(1);
    }
    DEBUG_CHECK(runtime_state, interpreters_head, offsetof(_PyRuntimeState, interpreters.head));
    DEBUG_CHECK(interpreter_state, next, offsetof(PyInterpreterState, next));
    DEBUG_CHECK(interpreter_state, threads_head, offsetof(PyInterpreterState, threads.head));
    DEBUG_CHECK(thread_state, next, offsetof(PyThreadState, next));
    DEBUG_CHECK(thread_state, interp, offsetof(PyThreadState, interp));
    DEBUG_CHECK(thread_state, current_frame, offsetof(PyThreadState, current_frame));
    DEBUG_CHECK(thread_state, thread_id, offsetof(PyThreadState, thread_id));
    DEBUG_CHECK(thread_state, native_thread_id, offsetof(PyThreadState, native_thread_id));
    DEBUG_CHECK(interpreter_frame, previous, offsetof(_PyInterpreterFrame, previous));
    DEBUG_CHECK(interpreter_frame, executable, offsetof(_PyInterpreterFrame, f_executable));
    DEBUG_CHECK(interpreter_frame, instr_ptr, offsetof(_PyInterpreterFrame, instr_ptr));
    DEBUG_CHECK(interpreter_frame, owner, offsetof(_PyInterpreterFrame, owner));
    DEBUG_CHECK(code_object, size, sizeof(PyCodeObject));
    DEBUG_CHECK(code_object, filename, offsetof(PyCodeObject, co_filename));
    DEBUG_CHECK(code_object, name, offsetof(PyCodeObject, co_name));
    DEBUG_CHECK(code_object, qualname, offsetof(PyCodeObject, co_qualname));
    DEBUG_CHECK(code_object, linetable, offsetof(PyCodeObject, co_linetable));
    DEBUG_CHECK(code_object, firstlineno, offsetof(PyCodeObject, co_firstlineno));
    DEBUG_CHECK(code_object, argcount, offsetof(PyCodeObject, co_argcount));
    DEBUG_CHECK(code_object, co_code_adaptive, offsetof(PyCodeObject, co_code_adaptive));
    DEBUG_CHECK(pyobject, ob_type, offsetof(PyObject, ob_type));
    DEBUG_CHECK(type_object, tp_name, offsetof(PyTypeObject, tp_name));
    DEBUG_CHECK(bytes_object, ob_size, offsetof(PyBytesObject, ob_base.ob_size));
    DEBUG_CHECK(bytes_object, ob_sval, offsetof(PyBytesObject, ob_sval));
    DEBUG_CHECK(unicode_object, state, offsetof(PyASCIIObject, state));
    DEBUG_CHECK(unicode_object, length, offsetof(PyASCIIObject, length));
    DEBUG_CHECK(unicode_object, asciiobject_size, sizeof(PyASCIIObject));
    if (debug_mismatches != 0) {
        fprintf(stderr, "%d of %d _Py_DebugOffsets members disagree with the headers\n",
                debug_mismatches, debug_checked);
        exit(1);
    }
    printf("# %d.%d: %d fields agree with _Py_DebugOffsets in the linked libpython (0x%llx)\n",
           PY_MAJOR_VERSION, PY_MINOR_VERSION, debug_checked, (unsigned long long)d->version);
#else
    printf("# %d.%d: _Py_DebugOffsets not checked (probe was not linked against libpython)\n",
           PY_MAJOR_VERSION, PY_MINOR_VERSION);
#endif
}
#endif

int main(void)
{
    /* Lets the generator check it compiled against the version it meant to. */
    FIELD("py_version_hex", PY_VERSION_HEX);

    FIELD("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
#if PY_MINOR_VERSION <= 10
    FIELD("interp_threads_head", offsetof(PyInterpreterState, tstate_head));
#else
    FIELD("interp_threads_head", offsetof(PyInterpreterState, threads.head));
#endif
    FIELD("interp_next", offsetof(PyInterpreterState, next));

    FIELD("tstate_next", offsetof(PyThreadState, next));
    FIELD("tstate_interp", offsetof(PyThreadState, interp));
    FIELD("tstate_thread_id", offsetof(PyThreadState, thread_id));
#if PY_MINOR_VERSION >= 11
    FIELD("tstate_native_thread_id", offsetof(PyThreadState, native_thread_id));
#else
    ABSENT("tstate_native_thread_id");
#endif

    /* The thread's innermost frame: a PyFrameObject up to 3.10; from 3.11 the
     * eval loop runs on _PyInterpreterFrame, reached through _PyCFrame in
     * 3.11-3.12 and directly from the thread state in 3.13. */
#if PY_MINOR_VERSION <= 10
    FIELD("tstate_frame", offsetof(PyThreadState, frame));
    ABSENT("cframe_current_frame");
#elif PY_MINOR_VERSION <= 12
    FIELD("tstate_frame", offsetof(PyThreadState, cframe));
    FIELD("cframe_current_frame", offsetof(_PyCFrame, current_frame));
#else
    FIELD("tstate_frame", offsetof(PyThreadState, current_frame));
    ABSENT("cframe_current_frame");
#endif

#if PY_MINOR_VERSION <= 10
    FIELD("frame_previous", offsetof(PyFrameObject, f_back));
    FIELD("frame_code", offsetof(PyFrameObject, f_code));
    FIELD("frame_lasti", offsetof(PyFrameObject, f_lasti));
    FIELD("frame_lasti_size", SIZEOF_MEMBER(PyFrameObject, f_lasti));
#else
    FIELD("frame_previous", offsetof(_PyInterpreterFrame, previous));
#if PY_MINOR_VERSION <= 12
    FIELD("frame_code", offsetof(_PyInterpreterFrame, f_code));
#else
    /* Renamed because it may also hold None (the 3.13 C-stack entry frame). */
    FIELD("frame_code", offsetof(_PyInterpreterFrame, f_executable));
#endif
    ABSENT("frame_lasti");
    ABSENT("frame_lasti_size");
#endif

#if PY_MINOR_VERSION <= 10
    ABSENT("frame_instr_ptr");
#elif PY_MINOR_VERSION <= 12
    FIELD("frame_instr_ptr", offsetof(_PyInterpreterFrame, prev_instr));
#else
    FIELD("frame_instr_ptr", offsetof(_PyInterpreterFrame, instr_ptr));
#endif

#if PY_MINOR_VERSION <= 10
    ABSENT("frame_owner");
    ABSENT("frame_owned_by_cstack");
    ABSENT("frame_owned_by_generator");
#else
    FIELD("frame_owner", offsetof(_PyInterpreterFrame, owner));
#if PY_MINOR_VERSION >= 12
    FIELD("frame_owned_by_cstack", FRAME_OWNED_BY_CSTACK);
#else
    ABSENT("frame_owned_by_cstack");
#endif
    FIELD("frame_owned_by_generator", FRAME_OWNED_BY_GENERATOR);
#endif

#if PY_MINOR_VERSION >= 11
    FIELD("code_code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
    FIELD("code_firsttraceable", offsetof(PyCodeObject, _co_firsttraceable));
#else
    ABSENT("code_code_adaptive");
    ABSENT("code_firsttraceable");
#endif
    FIELD("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
    FIELD("code_name", offsetof(PyCodeObject, co_name));
#if PY_MINOR_VERSION >= 11
    FIELD("code_qualname", offsetof(PyCodeObject, co_qualname));
#else
    ABSENT("code_qualname");
#endif
    FIELD("code_filename", offsetof(PyCodeObject, co_filename));
    /* Same role, different encoding: co_lnotab up to 3.9, the 3.10 line table,
     * and from 3.11 the location table. */
#if PY_MINOR_VERSION >= 10
    FIELD("code_linetable", offsetof(PyCodeObject, co_linetable));
#else
    FIELD("code_linetable", offsetof(PyCodeObject, co_lnotab));
#endif
    FIELD("code_argcount", offsetof(PyCodeObject, co_argcount));
    FIELD("code_flags", offsetof(PyCodeObject, co_flags));
    FIELD("code_size_of", sizeof(PyCodeObject));

    FIELD("object_type", offsetof(PyObject, ob_type));
    FIELD("type_name", offsetof(PyTypeObject, tp_name));
    FIELD("bytes_size", offsetof(PyBytesObject, ob_base.ob_size));
    FIELD("bytes_data", offsetof(PyBytesObject, ob_sval));

    FIELD("unicode_length", offsetof(PyASCIIObject, length));
    /* `state` is an ordinary member (only its members are bitfields), so
     * offsetof is exact; it has always directly followed `hash`, and a layout
     * where it does not is new enough to deserve a look before trusting it. */
    if (offsetof(PyASCIIObject, state) != offsetof(PyASCIIObject, hash) + sizeof(Py_hash_t)) {
        fprintf(stderr, "PyASCIIObject.state no longer follows hash\n");
        return 1;
    }
    FIELD("unicode_state", offsetof(PyASCIIObject, state));
    FIELD("unicode_ascii_data", sizeof(PyASCIIObject));
    FIELD("unicode_compact_data", sizeof(PyCompactUnicodeObject));
    STATE_BITS(kind, "unicode_kind_shift", "unicode_kind_mask");
    STATE_BITS(compact, "unicode_compact_shift", NULL);
    STATE_BITS(ascii, "unicode_ascii_shift", NULL);

#if PY_MINOR_VERSION >= 13
    check_debug_offsets();
#endif
    return 0;
}
