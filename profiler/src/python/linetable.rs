//! Instruction offset → source line, for each CPython line-table format.
//!
//! - 3.8–3.9: `co_lnotab`, pairs of (bytecode byte increment, signed line increment);
//! - 3.10: `co_linetable`, pairs of (byte range length, signed line delta, -128 = no line);
//! - 3.11+: the PEP 626/657 location table, varint-coded entries per run of code units.
//!
//! These parse bytes read from another process, so they must never panic or loop forever on
//! garbage: every index is checked and every loop consumes input.

/// Line for the instruction at byte offset `lasti` (3.8–3.9). Lines of a corrupt table that
/// run past `i32` stop at its bounds.
pub fn lnotab_line(lnotab: &[u8], firstlineno: i32, lasti: i32) -> i32 {
    let mut line = firstlineno;
    let mut addr = 0i64;
    for pair in lnotab.chunks_exact(2) {
        addr += pair[0] as i64;
        if addr > lasti as i64 {
            break;
        }
        line = line.saturating_add(pair[1] as i8 as i32);
    }
    line
}

/// Line for the instruction at byte offset `offset` (3.10), or None for "no line" (and for a
/// corrupt table whose lines run past `i32`).
pub fn linetable310_line(table: &[u8], firstlineno: i32, offset: i32) -> Option<i32> {
    let mut line = firstlineno;
    let mut end = 0i64;
    let offset = offset as i64;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += pair[0] as i64;
        let delta = pair[1] as i8;
        let this_line = if delta == -128 {
            None
        } else {
            line = line.checked_add(delta as i32)?;
            Some(line)
        };
        if start <= offset && offset < end {
            return this_line;
        }
    }
    None
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u32> {
        let mut b = self.byte()?;
        let mut value = (b & 63) as u32;
        let mut shift = 6;
        while b & 64 != 0 {
            b = self.byte()?;
            if shift > 28 {
                return None;
            }
            value |= ((b & 63) as u32) << shift;
            shift += 6;
        }
        Some(value)
    }

    fn svarint(&mut self) -> Option<i32> {
        let v = self.varint()?;
        Some(if v & 1 != 0 { -((v >> 1) as i32) } else { (v >> 1) as i32 })
    }
}

/// Line for the instruction at code-unit index `unit` (3.11+ location table), or None when the
/// instruction has no location (or the table is corrupt).
pub fn location_table_line(table: &[u8], firstlineno: i32, unit: i64) -> Option<i32> {
    if unit < 0 {
        return None;
    }
    let mut r = Reader { data: table, pos: 0 };
    let mut line = firstlineno;
    let mut start = 0i64;
    while r.pos < table.len() {
        let first = r.byte()?;
        if first & 0x80 == 0 {
            return None; // not at an entry start: corrupt table
        }
        let code = (first >> 3) & 15;
        let length = (first & 7) as i64 + 1;
        let entry_line = match code {
            15 => None,
            14 => {
                line = line.checked_add(r.svarint()?)?;
                r.varint()?; // end line delta
                r.varint()?; // column + 1
                r.varint()?; // end column + 1
                Some(line)
            }
            13 => {
                line = line.checked_add(r.svarint()?)?;
                Some(line)
            }
            10..=12 => {
                line = line.checked_add((code - 10) as i32)?;
                r.byte()?;
                r.byte()?;
                Some(line)
            }
            _ => {
                r.byte()?;
                Some(line)
            }
        };
        if start <= unit && unit < start + length {
            return entry_line;
        }
        start += length;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lnotab() {
        // line 10: bytes 0..6 → 10, 6..10 → 11, 10.. → 13
        let t = [6, 1, 4, 2];
        assert_eq!(lnotab_line(&t, 10, 0), 10);
        assert_eq!(lnotab_line(&t, 10, 5), 10);
        assert_eq!(lnotab_line(&t, 10, 6), 11);
        assert_eq!(lnotab_line(&t, 10, 12), 13);
        // negative line increments (signed bytes)
        assert_eq!(lnotab_line(&[2, 5, 2, 0xfd], 1, 4), 3);
    }

    #[test]
    fn linetable310() {
        let t = [4, 1, 0, 0x80 /* -128 */, 6, 2];
        assert_eq!(linetable310_line(&t, 20, 0), Some(21));
        assert_eq!(linetable310_line(&t, 20, 3), Some(21));
        assert_eq!(linetable310_line(&t, 20, 4), Some(23));
        assert_eq!(linetable310_line(&t, 20, 100), None);
    }

    #[test]
    fn location_table_forms() {
        // Entry 1: one-line form code 11 (line +1), 2 units, 2 column bytes.
        // Entry 2: no-column form code 13, line delta -1 (svarint 3), 1 unit.
        // Entry 3: no location (15), 1 unit. Entry 4: long form code 14, +5, 3 units.
        let t = [0x80 | (11 << 3) | 1, 4, 9, 0x80 | (13 << 3), 3, 0x80 | (15 << 3), 0x80 | (14 << 3) | 2, 10, 0, 1, 1];
        assert_eq!(location_table_line(&t, 100, 0), Some(101));
        assert_eq!(location_table_line(&t, 100, 1), Some(101));
        assert_eq!(location_table_line(&t, 100, 2), Some(100));
        assert_eq!(location_table_line(&t, 100, 3), None);
        assert_eq!(location_table_line(&t, 100, 4), Some(105));
        assert_eq!(location_table_line(&t, 100, 6), Some(105));
        assert_eq!(location_table_line(&t, 100, 7), None);
        assert_eq!(location_table_line(&t, 100, -1), None);
    }

    /// Found by the `linetable` fuzzer: line arithmetic overflowed `i32` (a panic with overflow
    /// checks, a wrapped line without).
    #[test]
    fn lines_past_i32_are_bounded() {
        assert_eq!(lnotab_line(&[0, 127, 0, 127], i32::MAX - 1, 10), i32::MAX);
        assert_eq!(lnotab_line(&[0, 0x80, 0, 0x80], i32::MIN + 1, 10), i32::MIN);
        assert_eq!(linetable310_line(&[2, 127, 2, 1], i32::MAX - 127, 2), None);
        assert_eq!(linetable310_line(&[2, 127], i32::MAX, 0), None);
        // Forms 10-12 (+0..+2), 13 (svarint) and 14 (svarint) all check.
        assert_eq!(location_table_line(&[0x80 | (12 << 3), 0, 0], i32::MAX, 0), None);
        assert_eq!(location_table_line(&[0x80 | (13 << 3), 2], i32::MAX, 0), None);
        assert_eq!(location_table_line(&[0x80 | (14 << 3), 2, 0, 0, 0], i32::MAX, 0), None);
        assert_eq!(location_table_line(&[0x80 | (13 << 3), 3], i32::MIN, 0), None);
        // A 1 MiB table of maximal increments (the largest we read) counts bytes in i64.
        let big = [255u8, 0].repeat(1 << 19);
        assert_eq!(lnotab_line(&big, 1, i32::MAX), 1);
        assert_eq!(linetable310_line(&big, 1, i32::MAX), None);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678u32;
        for len in 0..200 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            for unit in [-5, 0, 1, 7, 1000] {
                let _ = location_table_line(&data, 1, unit);
                let _ = linetable310_line(&data, 1, unit as i32);
                let _ = lnotab_line(&data, 1, unit as i32);
            }
        }
    }
}
