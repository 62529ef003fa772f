//! The three CPython line-table formats (3.8–3.9 lnotab, 3.10 linetable, 3.11+ location table)
//! on arbitrary bytes: they come from another process's memory.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use profiler::python::linetable;

#[derive(Arbitrary, Debug)]
struct Input {
    firstlineno: i32,
    offset: i64,
    table: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let Input { firstlineno, offset, table } = input;
    let _ = linetable::lnotab_line(&table, firstlineno, offset as i32);
    let _ = linetable::linetable310_line(&table, firstlineno, offset as i32);
    let _ = linetable::location_table_line(&table, firstlineno, offset);
});
