/*
 * Offset probe for `cargo xtask gen-python-offsets` (see python_offsets.rs).
 *
 * Compiled once per CPython minor version against that version's own headers:
 *
 *     cc -DPy_BUILD_CORE -I<inc> -I<inc>/internal python_offsets_probe.c
 *
 * (and, when the install has a shared libpython, linked against it with
 * -DPROBE_LINKED_LIBPYTHON: the probe then checks 3.13+'s _Py_DebugOffsets and
 * reads live objects back through its own numbers), then run. Free-threaded
 * builds (3.13+, Py_GIL_DISABLED) are probed the same way against their own
 * pyconfig.h, or, when no such build is at hand, against a GIL build's headers
 * with -DPy_GIL_DISABLED=1 (every layout difference is an #ifdef on that macro
 * in the headers; nothing can then be checked live). It prints one `name value` line per PyOffsets field, -1 for a field
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
#if PY_MINOR_VERSION >= 14
/* 3.14 moved the frame struct to pycore_interpframe_structs.h and made
 * f_executable a _PyStackRef (pycore_stackref.h). */
#include "internal/pycore_interpframe.h"
#include "internal/pycore_stackref.h"
#endif

/*
 * For reading Python objects' contents (thread names: sys.modules → the
 * threading module → its dict → Thread instances' attributes): ints, module
 * objects, dicts and where an instance keeps its attributes. Python.h only
 * includes longintrepr.h itself from 3.11; the module object became a header
 * in 3.10 and the dict keys object in 3.11 (see the mirrors below for older).
 */
#if PY_MINOR_VERSION <= 10
#include <longintrepr.h>
#endif
#if PY_MINOR_VERSION >= 10
#include "internal/pycore_moduleobject.h"
#endif
#if PY_MINOR_VERSION >= 11
#include "internal/pycore_dict.h"
#include "internal/pycore_object.h"
#endif

/*
 * Up to 3.10 the dict keys object (Objects/dict-common.h) and, up to 3.9, the
 * module object (Objects/moduleobject.c) are private to their .c files, so no
 * installed header describes them. These mirror those versions' sources (the
 * leading members only, as far as the reader goes). offsetof cannot vouch for
 * a mirror, so when the probe is linked against libpython it checks them, and
 * the rest of the dict layout, against live objects (check_live_layouts).
 */
#if PY_MINOR_VERSION <= 10
typedef struct {
    Py_ssize_t dk_refcnt;
    Py_ssize_t dk_size;
    void *dk_lookup; /* dict_lookup_func */
    Py_ssize_t dk_usable;
    Py_ssize_t dk_nentries;
    char dk_indices[];
} ProbeDictKeysObject;

typedef struct {
    Py_hash_t me_hash;
    PyObject *me_key;
    PyObject *me_value;
} ProbeDictKeyEntry;
#endif
#if PY_MINOR_VERSION <= 9
typedef struct {
    PyObject_HEAD
    PyObject *md_dict;
} ProbeModuleObject;
#else
typedef PyModuleObject ProbeModuleObject;
#endif

/*
 * Every printed field is also remembered, so that later checks (the
 * _Py_DebugOffsets map, the live frame walk) use exactly the printed numbers.
 */
#define MAX_FIELDS 128
static struct {
    const char *name;
    long long value;
} printed[MAX_FIELDS];
static int printed_count;

static void print_field(const char *name, long long value)
{
    if (printed_count == MAX_FIELDS) {
        fprintf(stderr, "more than %d fields: raise MAX_FIELDS\n", MAX_FIELDS);
        exit(1);
    }
    printed[printed_count].name = name;
    printed[printed_count].value = value;
    printed_count++;
    printf("%s %lld\n", name, value);
}

/* The value printed for `name` (which must have been printed already). */
static long long printed_value(const char *name)
{
    for (int i = 0; i < printed_count; i++) {
        if (strcmp(printed[i].name, name) == 0) {
            return printed[i].value;
        }
    }
    fprintf(stderr, "internal: %s used before it was printed\n", name);
    exit(1);
}

#define FIELD(name, value) print_field((name), (long long)(value))
/* Notes name the build: "3.14t" for a free-threaded one. */
#ifdef Py_GIL_DISABLED
#define PROBE_ABI "t"
#else
#define PROBE_ABI ""
#endif
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
_Static_assert(SIZEOF_MEMBER(PyTypeObject, tp_flags) == 8, "tp_flags is read as u64");
_Static_assert(SIZEOF_MEMBER(PyTypeObject, tp_dictoffset) == 8, "tp_dictoffset is read as i64");
_Static_assert(SIZEOF_MEMBER(PyDictObject, ma_used) == 8, "ma_used is read as i64");
_Static_assert(sizeof(digit) == 4, "int digits are read as u32");
#if PY_MINOR_VERSION <= 10
_Static_assert(SIZEOF_MEMBER(ProbeDictKeysObject, dk_size) == 8, "dk_size is read as i64");
_Static_assert(SIZEOF_MEMBER(ProbeDictKeysObject, dk_nentries) == 8, "read as i64");
#else
_Static_assert(SIZEOF_MEMBER(PyDictKeysObject, dk_log2_size) == 1, "read as u8");
_Static_assert(SIZEOF_MEMBER(PyDictKeysObject, dk_log2_index_bytes) == 1, "read as u8");
_Static_assert(SIZEOF_MEMBER(PyDictKeysObject, dk_kind) == 1, "read as u8");
_Static_assert(SIZEOF_MEMBER(PyDictKeysObject, dk_nentries) == 8, "read as i64");
#endif
#if PY_MINOR_VERSION >= 12
_Static_assert(SIZEOF_MEMBER(PyLongObject, long_value.lv_tag) == 8, "lv_tag is read as u64");
#endif
#if PY_MINOR_VERSION >= 13
_Static_assert(SIZEOF_MEMBER(PyDictValues, capacity) == 1, "read as u8");
_Static_assert(SIZEOF_MEMBER(PyDictValues, valid) == 1, "read as u8");
#endif
_Static_assert(SIZEOF_MEMBER(struct _gil_runtime_state, locked) == 4, "gil locked is read as i32");
#if PY_MINOR_VERSION >= 14
_Static_assert(SIZEOF_MEMBER(_PyInterpreterFrame, f_executable) == 8, "f_executable is read as a word");
#endif
_Static_assert(SIZEOF_MEMBER(struct _gil_runtime_state, last_holder) == 8, "read as a pointer");
#if PY_MINOR_VERSION >= 12
_Static_assert(SIZEOF_MEMBER(PyInterpreterState, ceval.gil) == 8, "ceval.gil is a pointer");
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
 * Bits of the frame's code field that are not part of the pointer. Up to 3.13
 * the field is a plain PyObject* (0). 3.14 makes f_executable a _PyStackRef:
 * the object pointer with tag bits in its low bits (Py_TAG_REFCNT marks a
 * reference that owns no count, e.g. to an immortal object such as the None
 * of the entry frame). Checked here through the headers' own decoder: a
 * pointer tagged with any pointer tag comes back as the pointer once the
 * printed bits are cleared.
 */
static long long frame_code_tag_bits(void)
{
#if PY_MINOR_VERSION >= 14
#if defined(Py_STACKREF_DEBUG)
#error "debug stack references are not supported"
#endif
    static PyObject aligned[2];
    const uintptr_t object = (uintptr_t)&aligned[1];
    /* Free-threaded 3.14 tags deferred references with Py_TAG_DEFERRED (its
     * Py_TAG_BITS is 1); GIL builds and 3.15 with Py_TAG_REFCNT. */
    const uintptr_t tags[] = {0, Py_TAG_REFCNT};
    if ((object & Py_TAG_BITS) != 0) {
        fprintf(stderr, "objects are not aligned past the stack reference tag bits\n");
        exit(1);
    }
    for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
        _PyStackRef ref = {.bits = object | tags[i]};
        if ((tags[i] & ~(uintptr_t)Py_TAG_BITS) != 0 ||
            (uintptr_t)PyStackRef_AsPyObjectBorrow(ref) != object ||
            (ref.bits & ~(uintptr_t)Py_TAG_BITS) != object) {
            fprintf(stderr, "_PyStackRef tag 0x%lx is not cleared by Py_TAG_BITS 0x%lx\n",
                    (unsigned long)tags[i], (unsigned long)Py_TAG_BITS);
            exit(1);
        }
    }
    return Py_TAG_BITS;
#else
    return 0;
#endif
}

/*
 * Where the GIL lives, so that a thread blocked in futex() on an address
 * inside it can be told to be waiting for the GIL. Up to 3.11 there is one
 * GIL, embedded in _PyRuntime (ceval.gil); from 3.12 each interpreter points
 * at the GIL it uses (ceval.gil: its own _gil, or the main interpreter's when
 * it shares). Waiters block in take_gil on gil->cond / gil->mutex, and the
 * thread handing the GIL over on gil->switch_cond / switch_mutex: all four
 * are pthread objects inside the struct, so [gil, gil + size) covers every
 * futex word involved.
 */
struct gil_layout {
    long long runtime_ceval_gil, interp_ceval_gil, size, locked, last_holder;
};

static struct gil_layout get_gil_layout(void)
{
    struct gil_layout l;
#if PY_MINOR_VERSION <= 11
    l.runtime_ceval_gil = offsetof(_PyRuntimeState, ceval.gil);
    l.interp_ceval_gil = -1;
#else
    l.runtime_ceval_gil = -1;
    l.interp_ceval_gil = offsetof(PyInterpreterState, ceval.gil);
#endif
    l.size = sizeof(struct _gil_runtime_state);
    l.locked = offsetof(struct _gil_runtime_state, locked);
    l.last_holder = offsetof(struct _gil_runtime_state, last_holder);
    return l;
}

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
#ifdef Py_GIL_DISABLED
    if (d->free_threaded != 1) {
#else
    if (d->free_threaded != 0) {
#endif
        fprintf(stderr, "_Py_DebugOffsets.free_threaded is %llu in the linked libpython\n",
                (unsigned long long)d->free_threaded);
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
#if defined(Py_GIL_DISABLED) && PY_MINOR_VERSION >= 14
    DEBUG_CHECK(code_object, co_tlbc, offsetof(PyCodeObject, co_tlbc));
    DEBUG_CHECK(interpreter_frame, tlbc_index, offsetof(_PyInterpreterFrame, tlbc_index));
#endif
    DEBUG_CHECK(pyobject, ob_type, offsetof(PyObject, ob_type));
    DEBUG_CHECK(type_object, tp_name, offsetof(PyTypeObject, tp_name));
    DEBUG_CHECK(bytes_object, ob_size, offsetof(PyBytesObject, ob_base.ob_size));
    DEBUG_CHECK(bytes_object, ob_sval, offsetof(PyBytesObject, ob_sval));
    DEBUG_CHECK(unicode_object, state, offsetof(PyASCIIObject, state));
    DEBUG_CHECK(unicode_object, length, offsetof(PyASCIIObject, length));
    DEBUG_CHECK(unicode_object, asciiobject_size, sizeof(PyASCIIObject));
    /* The GIL: where the interpreter points at it, and its members as seen
     * in the interpreter's own embedded _gil. */
    const struct gil_layout gl = get_gil_layout();
    const long long own_gil = offsetof(PyInterpreterState, _gil);
    DEBUG_CHECK(interpreter_state, ceval_gil, gl.interp_ceval_gil);
    DEBUG_CHECK(interpreter_state, gil_runtime_state, own_gil);
    DEBUG_CHECK(interpreter_state, gil_runtime_state_locked, own_gil + gl.locked);
    DEBUG_CHECK(interpreter_state, gil_runtime_state_holder, own_gil + gl.last_holder);
    if (debug_mismatches != 0) {
        fprintf(stderr, "%d of %d _Py_DebugOffsets members disagree with the headers\n",
                debug_mismatches, debug_checked);
        exit(1);
    }
    printf("# %d.%d" PROBE_ABI ": %d fields agree with _Py_DebugOffsets in the linked libpython (0x%llx)\n",
           PY_MAJOR_VERSION, PY_MINOR_VERSION, debug_checked, (unsigned long long)d->version);
#else
    printf("# %d.%d" PROBE_ABI ": _Py_DebugOffsets not checked (probe was not linked against libpython)\n",
           PY_MAJOR_VERSION, PY_MINOR_VERSION);
#endif
}
#endif

/*
 * Dict layout. One struct feeds both the printed fields and the live check,
 * so what gets checked is exactly what gets printed.
 */
struct dict_layout {
    long long used, keys, values;
    long long values_array, values_capacity, values_valid;
    long long keys_size, keys_log2_size, keys_log2_index_bytes, keys_kind, keys_kind_general;
    long long keys_nentries, keys_indices;
    long long entry_size, entry_key, entry_value;
    long long unicode_entry_size, unicode_entry_key, unicode_entry_value;
};

static struct dict_layout get_dict_layout(void)
{
    struct dict_layout l;
    l.used = offsetof(PyDictObject, ma_used);
    l.keys = offsetof(PyDictObject, ma_keys);
    l.values = offsetof(PyDictObject, ma_values);
#if PY_MINOR_VERSION <= 10
    /* ma_values is a bare PyObject ** array; index width follows dk_size. */
    l.values_array = 0;
    l.values_capacity = -1;
    l.values_valid = -1;
    l.keys_size = offsetof(ProbeDictKeysObject, dk_size);
    l.keys_log2_size = -1;
    l.keys_log2_index_bytes = -1;
    l.keys_kind = -1;
    l.keys_kind_general = -1;
    l.keys_nentries = offsetof(ProbeDictKeysObject, dk_nentries);
    l.keys_indices = offsetof(ProbeDictKeysObject, dk_indices);
    l.entry_size = sizeof(ProbeDictKeyEntry);
    l.entry_key = offsetof(ProbeDictKeyEntry, me_key);
    l.entry_value = offsetof(ProbeDictKeyEntry, me_value);
    l.unicode_entry_size = -1;
    l.unicode_entry_key = -1;
    l.unicode_entry_value = -1;
#else
    l.values_array = offsetof(PyDictValues, values);
#if PY_MINOR_VERSION >= 13
    l.values_capacity = offsetof(PyDictValues, capacity);
    l.values_valid = offsetof(PyDictValues, valid);
#else
    l.values_capacity = -1;
    l.values_valid = -1;
#endif
    l.keys_size = -1;
    l.keys_log2_size = offsetof(PyDictKeysObject, dk_log2_size);
    l.keys_log2_index_bytes = offsetof(PyDictKeysObject, dk_log2_index_bytes);
    l.keys_kind = offsetof(PyDictKeysObject, dk_kind);
    l.keys_kind_general = DICT_KEYS_GENERAL;
    l.keys_nentries = offsetof(PyDictKeysObject, dk_nentries);
    l.keys_indices = offsetof(PyDictKeysObject, dk_indices);
    l.entry_size = sizeof(PyDictKeyEntry);
    l.entry_key = offsetof(PyDictKeyEntry, me_key);
    l.entry_value = offsetof(PyDictKeyEntry, me_value);
    l.unicode_entry_size = sizeof(PyDictUnicodeEntry);
    l.unicode_entry_key = offsetof(PyDictUnicodeEntry, me_key);
    l.unicode_entry_value = offsetof(PyDictUnicodeEntry, me_value);
#endif
    return l;
}

/* int layout: sign and digit count in ob_size up to 3.11, in lv_tag from 3.12. */
struct long_layout {
    long long size, tag, tag_sign_mask, tag_size_shift, digits, digit_bits;
};

static struct long_layout get_long_layout(void)
{
    struct long_layout l;
#if PY_MINOR_VERSION <= 11
    l.size = offsetof(PyLongObject, ob_base.ob_size);
    l.tag = -1;
    l.tag_sign_mask = -1;
    l.tag_size_shift = -1;
    l.digits = offsetof(PyLongObject, ob_digit);
#else
    l.size = -1;
    l.tag = offsetof(PyLongObject, long_value.lv_tag);
    l.tag_sign_mask = _PyLong_SIGN_MASK;
    l.tag_size_shift = _PyLong_NON_SIZE_BITS;
    l.digits = offsetof(PyLongObject, long_value.ob_digit);
#endif
    l.digit_bits = PyLong_SHIFT;
    return l;
}

/*
 * Where a managed-dict (3.11+) instance keeps its attributes. The pre-header
 * before the object is only described by the headers' accessor functions, so
 * they are called on a fake object whose type has the flags they assert.
 * Distances before the object are reported as positive numbers.
 */
struct instance_layout {
    long long managed_dict_before, managed_values_before, managed_values_tag, inline_values;
};

#if PY_MINOR_VERSION >= 11
static PyTypeObject fake_type;
static struct {
    PyObject *pre_header[8];
    PyObject object;
    PyObject *rest[8];
} fake;

static long long before_fake(const void *p)
{
    return (long long)((const char *)&fake.object - (const char *)p);
}
#endif

static struct instance_layout get_instance_layout(void)
{
    struct instance_layout l = {-1, -1, -1, -1};
#if PY_MINOR_VERSION >= 11
    fake_type.tp_flags = Py_TPFLAGS_MANAGED_DICT;
#if PY_MINOR_VERSION >= 13
    fake_type.tp_flags |= Py_TPFLAGS_INLINE_VALUES;
#endif
    fake_type.tp_basicsize = sizeof(PyObject);
    fake.object.ob_type = &fake_type;
    PyObject *obj = &fake.object;
#if PY_MINOR_VERSION == 11
    /* Separate slots: values (attributes not yet in a dict), then the dict. */
    l.managed_values_before = before_fake(_PyObject_ValuesPointer(obj));
    l.managed_dict_before = before_fake(_PyObject_ManagedDictPointer(obj));
    if (l.managed_dict_before != -MANAGED_DICT_OFFSET) {
        fprintf(stderr, "3.11 managed dict accessor disagrees with MANAGED_DICT_OFFSET\n");
        exit(1);
    }
#elif PY_MINOR_VERSION == 12
    /* One slot, PyDictOrValues: a dict pointer, or a values pointer stored
     * minus `tag` so that the tag bit is set (values are pointer aligned). */
    l.managed_dict_before = before_fake(_PyObject_DictOrValuesPointer(obj));
    l.managed_values_before = l.managed_dict_before;
    PyDictValues *values = (PyDictValues *)(uintptr_t)0x1000;
    PyDictOrValues dorv;
    _PyDictOrValues_SetValues(&dorv, values);
    l.managed_values_tag = (long long)((uintptr_t)values - (uintptr_t)dorv.values);
    PyDictOrValues as_dict;
    as_dict.dict = (PyObject *)(uintptr_t)0x2000;
    if (l.managed_values_tag <= 0 || ((uintptr_t)dorv.values & l.managed_values_tag) == 0 ||
        !_PyDictOrValues_IsValues(dorv) || _PyDictOrValues_GetValues(dorv) != values ||
        _PyDictOrValues_IsValues(as_dict) ||
        ((uintptr_t)as_dict.dict & l.managed_values_tag) != 0) {
        fprintf(stderr, "3.12 PyDictOrValues tagging is not a low-bit tag\n");
        exit(1);
    }
#else
    l.managed_dict_before = before_fake(_PyObject_ManagedDictPointer(obj));
    if (l.managed_dict_before != -MANAGED_DICT_OFFSET) {
        fprintf(stderr, "managed dict accessor disagrees with MANAGED_DICT_OFFSET\n");
        exit(1);
    }
    /* Inline values directly after the object (types whose instances have
     * nothing but a PyObject header and their attributes). */
    l.inline_values = -before_fake(_PyObject_InlineValues(obj));
#endif
    if (l.managed_dict_before <= 0 || l.managed_dict_before > (long long)sizeof(fake.pre_header) ||
        l.managed_values_before > (long long)sizeof(fake.pre_header)) {
        fprintf(stderr, "managed dict pointers are not in the pre-header\n");
        exit(1);
    }
#endif
    return l;
}

/*
 * With the real libpython: builds dicts, an instance, a module and ints, and
 * reads them back through nothing but the layout numbers above, the way the
 * profiler reads another process's memory. This is what vouches for the
 * mirrored structs of 3.8-3.10, and for the reader's understanding of the
 * index width, entry kinds, split values and the instance pre-header.
 */
#ifdef PROBE_LINKED_LIBPYTHON
static int live_failures;

#define LIVE_CHECK(cond, ...)                                   \
    do {                                                        \
        if (!(cond)) {                                          \
            fprintf(stderr, "live layout check failed: ");      \
            fprintf(stderr, __VA_ARGS__);                       \
            fputc('\n', stderr);                                \
            live_failures++;                                    \
        }                                                       \
    } while (0)

static uint64_t rd64(const void *base, long long off)
{
    uint64_t v;
    memcpy(&v, (const char *)base + off, sizeof(v));
    return v;
}

static uint8_t rd8(const void *base, long long off)
{
    return *((const uint8_t *)base + off);
}

static int key_is(uint64_t key, const char *name)
{
    PyObject *k = (PyObject *)(uintptr_t)key;
    return PyUnicode_Check(k) && PyUnicode_CompareWithASCIIString(k, name) == 0;
}

/* The value stored under `name` in a keys table (with a split table's values
 * array, or NULL for a combined table); counts the live entries. */
static PyObject *walk_keys(const struct dict_layout *l, const char *keys, const char *values,
                           const char *name, long long *live)
{
    long long nentries = (long long)rd64(keys, l->keys_nentries);
    size_t index_bytes;
    int unicode = 0;
    if (l->keys_size >= 0) {
        uint64_t size = rd64(keys, l->keys_size);
        size_t width = size <= 0xff ? 1 : size <= 0xffff ? 2 : size <= 0xffffffffu ? 4 : 8;
        index_bytes = size * width;
    } else {
        index_bytes = (size_t)1 << rd8(keys, l->keys_log2_index_bytes);
        unicode = rd8(keys, l->keys_kind) != l->keys_kind_general;
    }
    const char *entries = keys + l->keys_indices + index_bytes;
    long long size = unicode ? l->unicode_entry_size : l->entry_size;
    long long key_off = unicode ? l->unicode_entry_key : l->entry_key;
    long long value_off = unicode ? l->unicode_entry_value : l->entry_value;
    if (values != NULL && l->values_capacity >= 0) {
        LIVE_CHECK(nentries <= rd8(values, l->values_capacity), "more keys than values");
    }
    PyObject *found = NULL;
    *live = 0;
    for (long long i = 0; i < nentries; i++) {
        const char *entry = entries + i * size;
        uint64_t key = rd64(entry, key_off);
        uint64_t value = values != NULL ? rd64(values, l->values_array + i * 8)
                                        : rd64(entry, value_off);
        if (key == 0 || value == 0) {
            continue;
        }
        (*live)++;
        if (name != NULL && key_is(key, name)) {
            found = (PyObject *)(uintptr_t)value;
        }
    }
    return found;
}

static PyObject *walk_dict(const struct dict_layout *l, PyObject *dict, const char *name)
{
    const char *d = (const char *)dict;
    const char *keys = (const char *)(uintptr_t)rd64(d, l->keys);
    const char *values = (const char *)(uintptr_t)rd64(d, l->values);
    long long live;
    PyObject *found = walk_keys(l, keys, values, name, &live);
    LIVE_CHECK(live == (long long)rd64(d, l->used), "dict walk found %lld entries, ma_used %lld",
               live, (long long)rd64(d, l->used));
    LIVE_CHECK(live == PyDict_Size(dict), "dict walk found %lld entries, len %zd", live,
               PyDict_Size(dict));
    return found;
}

/* An instance attribute, found the way the reader does for each version. */
static PyObject *walk_attribute(const struct dict_layout *dl, const struct instance_layout *il,
                                PyObject *obj, const char *name)
{
    PyTypeObject *tp = Py_TYPE(obj);
    const char *o = (const char *)obj;
#if PY_MINOR_VERSION >= 11
    if (tp->tp_flags & Py_TPFLAGS_MANAGED_DICT) {
        uint64_t dict = rd64(o, -il->managed_dict_before);
        uint64_t values = 0;
        if (il->managed_values_tag > 0) {
            if (dict & (uint64_t)il->managed_values_tag) {
                values = dict + (uint64_t)il->managed_values_tag;
                dict = 0;
            }
        } else if (il->managed_values_before > 0) {
            values = rd64(o, -il->managed_values_before);
        }
#if PY_MINOR_VERSION >= 13
        if (values == 0 && dict == 0 && (tp->tp_flags & Py_TPFLAGS_INLINE_VALUES) &&
            rd8(o + il->inline_values, dl->values_valid)) {
            values = (uint64_t)(uintptr_t)(o + il->inline_values);
        }
#endif
        if (values != 0) {
            const char *keys = (const char *)((PyHeapTypeObject *)tp)->ht_cached_keys;
            long long live;
            return walk_keys(dl, keys, (const char *)(uintptr_t)values, name, &live);
        }
        return dict != 0 ? walk_dict(dl, (PyObject *)(uintptr_t)dict, name) : NULL;
    }
#else
    (void)il;
#endif
    /* A negative tp_dictoffset (from the end of a variable-size object) is
     * not followed by the reader either: Thread objects never have one. */
    Py_ssize_t offset = tp->tp_dictoffset;
    if (offset <= 0) {
        return NULL;
    }
    uint64_t dict = rd64(o, offset);
    return dict != 0 ? walk_dict(dl, (PyObject *)(uintptr_t)dict, name) : NULL;
}

static int walk_long(const struct long_layout *l, PyObject *obj, long long *out)
{
    const char *o = (const char *)obj;
    long long sign, ndigits;
    if (l->size >= 0) {
        long long size = (long long)rd64(o, l->size);
        sign = size < 0 ? -1 : size > 0;
        ndigits = size < 0 ? -size : size;
    } else {
        uint64_t tag = rd64(o, l->tag);
        sign = 1 - (long long)(tag & (uint64_t)l->tag_sign_mask);
        ndigits = (long long)(tag >> l->tag_size_shift);
    }
    if (ndigits > 2) {
        return 0;
    }
    uint64_t magnitude = 0;
    for (long long i = 0; i < ndigits; i++) {
        uint32_t d;
        memcpy(&d, o + l->digits + i * 4, sizeof(d));
        magnitude |= (uint64_t)d << (l->digit_bits * i);
    }
    *out = sign * (long long)magnitude;
    return 1;
}

static PyObject *run_python(const char *source)
{
    PyObject *globals = PyDict_New();
    PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins());
    PyObject *result = PyRun_String(source, Py_file_input, globals, globals);
    if (result == NULL) {
        PyErr_Print();
        fprintf(stderr, "live layout check: the Python snippet failed\n");
        exit(1);
    }
    Py_DECREF(result);
    return globals;
}

static void check_live_layouts(void)
{
    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    PyStatus status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        fprintf(stderr, "live layout check: cannot initialize the linked libpython\n");
        exit(1);
    }
    const struct dict_layout dl = get_dict_layout();
    const struct instance_layout il = get_instance_layout();
    const struct long_layout ll = get_long_layout();

    /* Small and large str-keyed dicts (1- and 2-byte indices), an int-keyed
     * one (general entries from 3.11), instances with values only, with a
     * materialized dict and with more attributes than shared keys allow. */
    PyObject *g = run_python(
        "small = {'k%d' % i: i for i in range(5)}\n"
        "large = {'k%d' % i: i for i in range(1000)}\n"
        "general = {i: i for i in range(5)}\n"
        "general['k3'] = 3\n"
        "class C:\n"
        "    def __init__(self):\n"
        "        self.a = 1\n"
        "        self.b = 2\n"
        "plain = C()\n"
        "materialized = C()\n"
        "split = materialized.__dict__\n"
        "wide = C()\n"
        "for i in range(40):\n"
        "    setattr(wide, 'x%d' % i, i)\n"
        "ints = [0, 1, -5, 2**30 + 7, -(2**59 + 3), 12345678901234]\n");
    static const char *const dicts[] = {"small", "large", "general"};
    for (size_t i = 0; i < sizeof(dicts) / sizeof(dicts[0]); i++) {
        PyObject *found = walk_dict(&dl, PyDict_GetItemString(g, dicts[i]), "k3");
        LIVE_CHECK(found != NULL && PyLong_AsLong(found) == 3, "%s['k3'] not found", dicts[i]);
    }
    PyObject *split = PyDict_GetItemString(g, "split");
    LIVE_CHECK(rd64(split, dl.values) != 0, "an instance __dict__ is not a split table");
    PyObject *b = walk_dict(&dl, split, "b");
    LIVE_CHECK(b != NULL && PyLong_AsLong(b) == 2, "split dict entry not found");
    static const char *const instances[] = {"plain", "materialized", "wide"};
    for (size_t i = 0; i < sizeof(instances) / sizeof(instances[0]); i++) {
        PyObject *obj = PyDict_GetItemString(g, instances[i]);
        PyObject *a = walk_attribute(&dl, &il, obj, "a");
        LIVE_CHECK(a != NULL && PyLong_AsLong(a) == 1, "%s.a not found", instances[i]);
    }
    PyObject *x39 = walk_attribute(&dl, &il, PyDict_GetItemString(g, "wide"), "x39");
    LIVE_CHECK(x39 != NULL && PyLong_AsLong(x39) == 39, "wide.x39 not found");

    PyObject *ints = PyDict_GetItemString(g, "ints");
    for (Py_ssize_t i = 0; i < PyList_Size(ints); i++) {
        PyObject *n = PyList_GetItem(ints, i);
        long long value;
        LIVE_CHECK(walk_long(&ll, n, &value) && value == PyLong_AsLongLong(n),
                   "int %lld decodes wrongly", PyLong_AsLongLong(n));
    }

    PyObject *module = PyModule_New("probe");
    LIVE_CHECK(rd64(module, offsetof(ProbeModuleObject, md_dict)) ==
                   (uint64_t)(uintptr_t)PyModule_GetDict(module),
               "md_dict is not where the module keeps its dict");
    Py_DECREF(module);
    Py_DECREF(g);

    if (live_failures != 0) {
        fprintf(stderr, "%d live layout checks failed\n", live_failures);
        exit(1);
    }
    printf("# %d.%d" PROBE_ABI ": dict, instance attribute, int and module layouts checked against live objects "
           "in the linked libpython\n",
           PY_MAJOR_VERSION, PY_MINOR_VERSION);
}

static int32_t rd32(const void *base, long long off)
{
    int32_t v;
    memcpy(&v, (const char *)base + off, sizeof(v));
    return v;
}

/*
 * Finds the GIL the way the profiler does, from _PyRuntime and the printed
 * offsets alone, and checks it against the members the headers name: the
 * range must hold the GIL's mutex and condition variable (what a waiting
 * thread blocks on), `locked` must follow this thread dropping and retaking
 * the GIL, and `last_holder` must be this thread's state. Runs after
 * check_live_layouts, so the interpreter is initialized and this thread holds
 * the GIL.
 */
static void check_live_gil(void)
{
    const struct gil_layout l = get_gil_layout();
    PyThreadState *tstate = PyThreadState_Get();
#if PY_MINOR_VERSION <= 11
    const char *gil = (const char *)&_PyRuntime + l.runtime_ceval_gil;
    const struct _gil_runtime_state *named = &_PyRuntime.ceval.gil;
#else
    /* The main interpreter, as the reader finds it: the last in the list. */
    const char *interp =
        (const char *)(uintptr_t)rd64(&_PyRuntime, offsetof(_PyRuntimeState, interpreters.head));
    while (rd64(interp, offsetof(PyInterpreterState, next)) != 0) {
        interp = (const char *)(uintptr_t)rd64(interp, offsetof(PyInterpreterState, next));
    }
    LIVE_CHECK(interp == (const char *)PyInterpreterState_Main(),
               "the last interpreter in the list is not the main one");
    const char *gil = (const char *)(uintptr_t)rd64(interp, l.interp_ceval_gil);
    /* The main interpreter always has its own GIL. */
    const struct _gil_runtime_state *named = &PyInterpreterState_Main()->_gil;
    if (gil != (const char *)named) {
        /* Reading on through a wrong pointer could crash the probe. */
        fprintf(stderr, "live GIL check failed: interp->ceval.gil is %p, not &interp->_gil %p\n",
                (const void *)gil, (const void *)named);
        exit(1);
    }
#endif
    const char *end = gil + l.size;
    const void *members[] = {&named->mutex, &named->cond, &named->switch_mutex,
                             &named->switch_cond};
    for (size_t i = 0; i < sizeof(members) / sizeof(members[0]); i++) {
        LIVE_CHECK((const char *)members[i] >= gil && (const char *)members[i] < end,
                   "GIL synchronization object %zu at %p is outside [%p, %p)", i, members[i],
                   (const void *)gil, (const void *)end);
    }
#ifdef Py_GIL_DISABLED
    /* Free-threaded: the GIL exists (PYTHON_GIL=1 or an extension module
     * without free-threading support turns it on) but is disabled here, so
     * nobody holds it and nobody waits on it. */
    (void)tstate;
    LIVE_CHECK(named->enabled == 0, "the GIL of a free-threaded build is enabled");
    LIVE_CHECK(rd32(gil, l.locked) == 0, "gil.locked reads %d with the GIL disabled",
               rd32(gil, l.locked));
#else
    LIVE_CHECK(rd32(gil, l.locked) == 1, "gil.locked reads %d while holding the GIL",
               rd32(gil, l.locked));
    LIVE_CHECK(rd64(gil, l.last_holder) == (uint64_t)(uintptr_t)tstate,
               "gil.last_holder is not this thread's state");
    PyThreadState *saved = PyEval_SaveThread();
    int32_t released = rd32(gil, l.locked);
    PyEval_RestoreThread(saved);
    LIVE_CHECK(released == 0, "gil.locked reads %d after releasing the GIL", released);
    LIVE_CHECK(rd32(gil, l.locked) == 1, "gil.locked reads %d after retaking the GIL",
               rd32(gil, l.locked));
#endif

    if (live_failures != 0) {
        fprintf(stderr, "%d live GIL checks failed\n", live_failures);
        exit(1);
    }
    printf("# %d.%d" PROBE_ABI ": GIL location, size, locked and last_holder checked against the live GIL "
           "in the linked libpython\n",
           PY_MAJOR_VERSION, PY_MINOR_VERSION);
}
#endif

#if PY_MINOR_VERSION >= 13
/*
 * Where the profiler finds PyOffsets fields in a live process's own
 * _Py_DebugOffsets (at the start of its _PyRuntime): printed as
 * `debug <field> <offset in _Py_DebugOffsets> <offset of a base member, or
 * -1>` (the field is the member minus the base: the GIL members are given
 * from the interpreter state, the table has them from the GIL), after
 * `debug_size <sizeof(_Py_DebugOffsets)>`. The profiler compares each with
 * the table when it finds a 3.13+ process and prefers the process's value.
 * Linked against libpython, each must read back as the printed field.
 */
struct debug_map_entry {
    const char *field;
    long long at, base;
};

#define DEBUG_AT(section, member) ((long long)offsetof(_Py_DebugOffsets, section.member))

static const struct debug_map_entry debug_map[] = {
    {"runtime_interpreters_head", DEBUG_AT(runtime_state, interpreters_head), -1},
    {"interp_threads_head", DEBUG_AT(interpreter_state, threads_head), -1},
    {"interp_next", DEBUG_AT(interpreter_state, next), -1},
    {"tstate_next", DEBUG_AT(thread_state, next), -1},
    {"tstate_interp", DEBUG_AT(thread_state, interp), -1},
    {"tstate_thread_id", DEBUG_AT(thread_state, thread_id), -1},
    {"tstate_native_thread_id", DEBUG_AT(thread_state, native_thread_id), -1},
    {"tstate_frame", DEBUG_AT(thread_state, current_frame), -1},
    {"frame_previous", DEBUG_AT(interpreter_frame, previous), -1},
    {"frame_code", DEBUG_AT(interpreter_frame, executable), -1},
    {"frame_instr_ptr", DEBUG_AT(interpreter_frame, instr_ptr), -1},
    {"frame_owner", DEBUG_AT(interpreter_frame, owner), -1},
    {"code_code_adaptive", DEBUG_AT(code_object, co_code_adaptive), -1},
    {"code_firstlineno", DEBUG_AT(code_object, firstlineno), -1},
    {"code_name", DEBUG_AT(code_object, name), -1},
    {"code_qualname", DEBUG_AT(code_object, qualname), -1},
    {"code_filename", DEBUG_AT(code_object, filename), -1},
    {"code_linetable", DEBUG_AT(code_object, linetable), -1},
    {"code_argcount", DEBUG_AT(code_object, argcount), -1},
    {"code_size_of", DEBUG_AT(code_object, size), -1},
#if defined(Py_GIL_DISABLED) && PY_MINOR_VERSION >= 14
    {"code_tlbc", DEBUG_AT(code_object, co_tlbc), -1},
    {"frame_tlbc_index", DEBUG_AT(interpreter_frame, tlbc_index), -1},
#endif
    {"object_type", DEBUG_AT(pyobject, ob_type), -1},
    {"type_name", DEBUG_AT(type_object, tp_name), -1},
    {"type_flags", DEBUG_AT(type_object, tp_flags), -1},
    {"bytes_size", DEBUG_AT(bytes_object, ob_size), -1},
    {"bytes_data", DEBUG_AT(bytes_object, ob_sval), -1},
    {"unicode_length", DEBUG_AT(unicode_object, length), -1},
    {"unicode_state", DEBUG_AT(unicode_object, state), -1},
    {"unicode_ascii_data", DEBUG_AT(unicode_object, asciiobject_size), -1},
    {"interp_modules", DEBUG_AT(interpreter_state, imports_modules), -1},
    {"dict_keys", DEBUG_AT(dict_object, ma_keys), -1},
    {"dict_values", DEBUG_AT(dict_object, ma_values), -1},
    {"long_tag", DEBUG_AT(long_object, lv_tag), -1},
    {"long_digits", DEBUG_AT(long_object, ob_digit), -1},
    {"interp_ceval_gil", DEBUG_AT(interpreter_state, ceval_gil), -1},
    {"gil_locked", DEBUG_AT(interpreter_state, gil_runtime_state_locked),
     DEBUG_AT(interpreter_state, gil_runtime_state)},
    {"gil_last_holder", DEBUG_AT(interpreter_state, gil_runtime_state_holder),
     DEBUG_AT(interpreter_state, gil_runtime_state)},
};

static void print_debug_map(void)
{
    const size_t n = sizeof(debug_map) / sizeof(debug_map[0]);
    printf("debug_size %zu\n", sizeof(_Py_DebugOffsets));
    for (size_t i = 0; i < n; i++) {
        const struct debug_map_entry *e = &debug_map[i];
        if (e->at < 0 || e->at + 8 > (long long)sizeof(_Py_DebugOffsets)) {
            fprintf(stderr, "_Py_DebugOffsets member for %s out of range\n", e->field);
            exit(1);
        }
        printf("debug %s %lld %lld\n", e->field, e->at, e->base);
    }
#ifdef PROBE_LINKED_LIBPYTHON
    const char *d = (const char *)&_PyRuntime.debug_offsets;
    int mismatches = 0;
    for (size_t i = 0; i < n; i++) {
        const struct debug_map_entry *e = &debug_map[i];
        uint64_t at, base = 0;
        memcpy(&at, d + e->at, sizeof(at));
        if (e->base >= 0) {
            memcpy(&base, d + e->base, sizeof(base));
        }
        long long value = (long long)(at - base);
        if (value != printed_value(e->field)) {
            fprintf(stderr, "_Py_DebugOffsets gives %s = %lld, the headers %lld\n", e->field, value,
                    printed_value(e->field));
            mismatches++;
        }
    }
    if (mismatches != 0) {
        exit(1);
    }
    printf("# %d.%d" PROBE_ABI ": %zu fields read from each process's _Py_DebugOffsets too, all equal to the "
           "linked libpython's\n",
           PY_MAJOR_VERSION, PY_MINOR_VERSION, n);
#endif
}
#endif

/*
 * 3.14: walks this thread's frame chain from a C function called by Python,
 * the way the kernel does (printed offsets, code pointer with the tag bits
 * cleared, owner byte), and checks what it finds: code objects with the
 * expected qualified names, the eval loop's entry frames (owned by the
 * interpreter, executable None) wherever C called into Python, a generator's
 * frame owned by its generator.
 */
#if defined(PROBE_LINKED_LIBPYTHON) && PY_MINOR_VERSION >= 14
static int frames_seen, frames_tagged;

static PyObject *probe_walk(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    const long long tstate_frame = printed_value("tstate_frame");
    const long long previous = printed_value("frame_previous");
    const long long code = printed_value("frame_code");
    const long long owner = printed_value("frame_owner");
    const uint64_t tag = (uint64_t)printed_value("frame_code_tag_bits");
    const long long first_shim = printed_value("frame_owned_by_interpreter");
    const long long generator = printed_value("frame_owned_by_generator");
    PyObject *names = PyList_New(0);
    const char *frame = (const char *)(uintptr_t)rd64(PyThreadState_Get(), tstate_frame);
    for (int i = 0; frame != NULL && i < 64; i++) {
        const uint64_t bits = rd64(frame, code);
        PyObject *executable = (PyObject *)(uintptr_t)(bits & ~tag);
        const int frame_owner = rd8(frame, owner);
        frames_seen++;
        frames_tagged += bits != (bits & ~tag);
        PyObject *name;
        if (frame_owner >= first_shim) {
            LIVE_CHECK(executable == Py_None, "entry frame (owner %d) does not run None", frame_owner);
            name = PyUnicode_FromString("<entry>");
        } else if (PyCode_Check(executable)) {
            name = PyUnicode_FromFormat("%U%s", ((PyCodeObject *)executable)->co_qualname,
                                        frame_owner == generator ? " (generator)" : "");
        } else {
            LIVE_CHECK(0, "frame %d (owner %d): 0x%llx is not a code object", i, frame_owner,
                       (unsigned long long)bits);
            break;
        }
        PyList_Append(names, name);
        Py_DECREF(name);
        frame = (const char *)(uintptr_t)rd64(frame, previous);
    }
    return names;
}

static void check_live_frames(void)
{
    static PyMethodDef def = {"probe_walk", probe_walk, METH_NOARGS, NULL};
    PyObject *globals = PyDict_New();
    PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins());
    PyObject *walk = PyCFunction_New(&def, NULL);
    PyDict_SetItemString(globals, "probe_walk", walk);
    Py_DECREF(walk);
    PyObject *result = PyRun_String("class C:\n"
                                    "    def method(self):\n"
                                    "        return probe_walk()\n"
                                    "def outer():\n"
                                    "    return C().method()\n"
                                    "def gen():\n"
                                    "    yield probe_walk()\n"
                                    "called = outer()\n"
                                    "generated = next(gen())\n",
                                    Py_file_input, globals, globals);
    if (result == NULL) {
        PyErr_Print();
        fprintf(stderr, "live frame check: the Python snippet failed\n");
        exit(1);
    }
    Py_DECREF(result);
#if PY_MINOR_VERSION >= 15
    /* 3.15 ends every thread's chain in its thread state's base frame, owned by the
     * interpreter too, below the entry frame of the first call from C. */
    PyObject *want_called = Py_BuildValue("[sssss]", "C.method", "outer", "<module>", "<entry>", "<entry>");
    PyObject *want_generated =
        Py_BuildValue("[sssss]", "gen (generator)", "<entry>", "<module>", "<entry>", "<entry>");
#else
    PyObject *want_called = Py_BuildValue("[ssss]", "C.method", "outer", "<module>", "<entry>");
    /* next() resumes the generator from C: a second entry frame between. */
    PyObject *want_generated =
        Py_BuildValue("[ssss]", "gen (generator)", "<entry>", "<module>", "<entry>");
#endif
    PyObject *called = PyDict_GetItemString(globals, "called");
    PyObject *generated = PyDict_GetItemString(globals, "generated");
    LIVE_CHECK(PyObject_RichCompareBool(called, want_called, Py_EQ) == 1, "frames of a call: %s",
               PyUnicode_AsUTF8(PyObject_Repr(called)));
    LIVE_CHECK(PyObject_RichCompareBool(generated, want_generated, Py_EQ) == 1,
               "frames of a generator: %s", PyUnicode_AsUTF8(PyObject_Repr(generated)));
    Py_DECREF(want_called);
    Py_DECREF(want_generated);
    Py_DECREF(globals);
    if (live_failures != 0) {
        fprintf(stderr, "%d live frame checks failed\n", live_failures);
        exit(1);
    }
    printf("# %d.%d" PROBE_ABI ": live frame chains walked through the printed layout: code objects under "
           "tag bits 0x%llx (set on %d of %d frames), entry frames owned by the interpreter, "
           "generator frames by their generator\n",
           PY_MAJOR_VERSION, PY_MINOR_VERSION, printed_value("frame_code_tag_bits"), frames_tagged,
           frames_seen);
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
#if PY_MINOR_VERSION >= 12 && PY_MINOR_VERSION <= 14
    FIELD("frame_owned_by_cstack", FRAME_OWNED_BY_CSTACK);
#else
    /* 3.15 drops it: owners are THREAD, GENERATOR, FRAME_OBJECT, INTERPRETER. */
    ABSENT("frame_owned_by_cstack");
#endif
    FIELD("frame_owned_by_generator", FRAME_OWNED_BY_GENERATOR);
#endif
#if PY_MINOR_VERSION >= 14
    /* 3.14 inserts FRAME_OWNED_BY_INTERPRETER before FRAME_OWNED_BY_CSTACK
     * and gives it to the eval loop's entry frame; every owner from it up is
     * not Python code (CPython's own readers test owner >= INTERPRETER). */
    FIELD("frame_owned_by_interpreter", FRAME_OWNED_BY_INTERPRETER);
    if (
#if PY_MINOR_VERSION == 14
        FRAME_OWNED_BY_CSTACK < FRAME_OWNED_BY_INTERPRETER ||
#endif
        FRAME_OWNED_BY_GENERATOR >= FRAME_OWNED_BY_INTERPRETER) {
        fprintf(stderr, "frame owners are no longer ordered: code owners below INTERPRETER\n");
        return 1;
    }
#else
    ABSENT("frame_owned_by_interpreter");
#endif
    FIELD("frame_code_tag_bits", frame_code_tag_bits());

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
#if PY_MINOR_VERSION >= 11
    /* Code units of bytecode (co_code_adaptive and each per-thread copy). */
    FIELD("code_units", offsetof(PyCodeObject, ob_base.ob_size));
#else
    ABSENT("code_units");
#endif
    /* Free-threaded 3.14+: each thread may run its own copy of the bytecode
     * (co_tlbc->entries[tlbc_index], entries[0] being co_code_adaptive), so a
     * frame's instr_ptr can point into any of them. */
#if defined(Py_GIL_DISABLED) && PY_MINOR_VERSION >= 14
    FIELD("code_tlbc", offsetof(PyCodeObject, co_tlbc));
    FIELD("code_array_size", offsetof(_PyCodeArray, size));
    FIELD("code_array_entries", offsetof(_PyCodeArray, entries));
    FIELD("frame_tlbc_index", offsetof(_PyInterpreterFrame, tlbc_index));
#else
    ABSENT("code_tlbc");
    ABSENT("code_array_size");
    ABSENT("code_array_entries");
    ABSENT("frame_tlbc_index");
#endif

#ifdef Py_GIL_DISABLED
    FIELD("free_threaded", 1);
#else
    FIELD("free_threaded", 0);
#endif
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

    /* sys.modules, the start of every walk over Python-level objects. */
#if PY_MINOR_VERSION <= 11
    FIELD("interp_modules", offsetof(PyInterpreterState, modules));
#else
    FIELD("interp_modules", offsetof(PyInterpreterState, imports.modules));
#endif
    FIELD("module_dict", offsetof(ProbeModuleObject, md_dict));

    FIELD("type_flags", offsetof(PyTypeObject, tp_flags));
    FIELD("type_dictoffset", offsetof(PyTypeObject, tp_dictoffset));
    FIELD("heap_type_cached_keys", offsetof(PyHeapTypeObject, ht_cached_keys));
    FIELD("type_flag_heaptype", Py_TPFLAGS_HEAPTYPE);
    FIELD("type_flag_long_subclass", Py_TPFLAGS_LONG_SUBCLASS);
    FIELD("type_flag_unicode_subclass", Py_TPFLAGS_UNICODE_SUBCLASS);
    FIELD("type_flag_dict_subclass", Py_TPFLAGS_DICT_SUBCLASS);
#if PY_MINOR_VERSION >= 11
    FIELD("type_flag_managed_dict", Py_TPFLAGS_MANAGED_DICT);
#else
    ABSENT("type_flag_managed_dict");
#endif
#if PY_MINOR_VERSION >= 13
    FIELD("type_flag_inline_values", Py_TPFLAGS_INLINE_VALUES);
#else
    ABSENT("type_flag_inline_values");
#endif

    const struct instance_layout il = get_instance_layout();
    FIELD("object_managed_dict_before", il.managed_dict_before);
    FIELD("object_managed_values_before", il.managed_values_before);
    FIELD("object_managed_values_tag", il.managed_values_tag);
    FIELD("object_inline_values", il.inline_values);

    const struct dict_layout dl = get_dict_layout();
    FIELD("dict_used", dl.used);
    FIELD("dict_keys", dl.keys);
    FIELD("dict_values", dl.values);
    FIELD("dict_values_array", dl.values_array);
    FIELD("dict_values_capacity", dl.values_capacity);
    FIELD("dict_values_valid", dl.values_valid);
    FIELD("dict_keys_size", dl.keys_size);
    FIELD("dict_keys_log2_size", dl.keys_log2_size);
    FIELD("dict_keys_log2_index_bytes", dl.keys_log2_index_bytes);
    FIELD("dict_keys_kind", dl.keys_kind);
    FIELD("dict_keys_kind_general", dl.keys_kind_general);
    FIELD("dict_keys_nentries", dl.keys_nentries);
    FIELD("dict_keys_indices", dl.keys_indices);
    FIELD("dict_entry_size", dl.entry_size);
    FIELD("dict_entry_key", dl.entry_key);
    FIELD("dict_entry_value", dl.entry_value);
    FIELD("dict_unicode_entry_size", dl.unicode_entry_size);
    FIELD("dict_unicode_entry_key", dl.unicode_entry_key);
    FIELD("dict_unicode_entry_value", dl.unicode_entry_value);

    const struct long_layout ll = get_long_layout();
    FIELD("long_size", ll.size);
    FIELD("long_tag", ll.tag);
    FIELD("long_tag_sign_mask", ll.tag_sign_mask);
    FIELD("long_tag_size_shift", ll.tag_size_shift);
    FIELD("long_digits", ll.digits);
    FIELD("long_digit_bits", ll.digit_bits);

    const struct gil_layout gl = get_gil_layout();
    FIELD("runtime_ceval_gil", gl.runtime_ceval_gil);
    FIELD("interp_ceval_gil", gl.interp_ceval_gil);
    FIELD("gil_size", gl.size);
    FIELD("gil_locked", gl.locked);
    FIELD("gil_last_holder", gl.last_holder);

#if PY_MINOR_VERSION >= 13
    check_debug_offsets();
    print_debug_map();
#endif
#ifdef PROBE_LINKED_LIBPYTHON
    check_live_layouts();
    check_live_gil();
#if PY_MINOR_VERSION >= 14
    check_live_frames();
#endif
#else
    printf("# %d.%d" PROBE_ABI ": dict, instance attribute, int and module layouts not checked against live objects "
           "(probe was not linked against libpython)\n",
           PY_MAJOR_VERSION, PY_MINOR_VERSION);
    printf("# %d.%d" PROBE_ABI ": GIL layout not checked against the live GIL "
           "(probe was not linked against libpython)\n",
           PY_MAJOR_VERSION, PY_MINOR_VERSION);
#endif
    return 0;
}
