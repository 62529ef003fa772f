//! Mixed stacks: the Python frames a sample recorded put in place of the interpreter's native
//! eval-loop frames that ran them, as py-spy `--native` does, but from what the kernel recorded
//! in one sample (no process is stopped).
//!
//! Each `_PyEval_EvalFrameDefault` call runs a group of Python frames:
//! - 3.8–3.10: one frame per call ([`Grouping::PerFrame`]);
//! - 3.11: the frames down to (and with) the one whose `is_entry` is set ([`Grouping::IsEntry`]);
//! - 3.12+: the frames above an entry frame, which the call keeps as a local variable on its
//!   own C stack ([`Grouping::EntryFrame`]): the group goes to the native frame whose stack range
//!   `[sp, cfa)` holds that entry frame's address, exactly, whatever else is on the stack.
//!
//! Without entry-frame addresses, groups are paired with eval frames by count: from the root
//! when the native walk reached it (the transitional states of a call being set up or torn down
//! are at the leaf), else from the leaf. Groups no eval frame takes (the native walk stopped
//! early) are kept, at the root end, so no Python frame is ever lost.

/// How a CPython version's frames group into eval-loop calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    PerFrame,
    IsEntry,
    EntryFrame,
}

/// A native frame of the walk, leaf first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NativeIn {
    /// Its stack range: `[sp, cfa)` (cfa 0 when the walk could not tell).
    pub sp: u64,
    pub cfa: u64,
    /// It is an eval-loop frame.
    pub eval: bool,
}

/// A recorded Python frame, leaf first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PyIn {
    /// 3.11: `is_entry` is set (the last frame of its group).
    pub entry: bool,
    /// 3.12+: it is an entry frame (not code), at this address (it ends the group above it).
    pub anchor: Option<u64>,
}

/// One frame of the merged stack, leaf first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// The i-th native frame.
    Native(usize),
    /// The i-th Python frame.
    Python(usize),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Merged {
    /// Leaf first.
    pub pieces: Vec<Piece>,
    /// Python frames no eval frame took (leaf first): they belong root-ward of `pieces`.
    pub unplaced: Vec<usize>,
}

struct Group {
    frames: Vec<usize>,
    anchor: Option<u64>,
}

fn groups(py: &[PyIn], grouping: Grouping) -> Vec<Group> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for (i, f) in py.iter().enumerate() {
        match grouping {
            Grouping::PerFrame => out.push(Group { frames: vec![i], anchor: None }),
            Grouping::IsEntry => {
                cur.push(i);
                if f.entry {
                    out.push(Group { frames: std::mem::take(&mut cur), anchor: None });
                }
            }
            Grouping::EntryFrame => match f.anchor {
                // An entry frame with nothing above it (a call being set up) is no group.
                Some(a) if !cur.is_empty() => out.push(Group { frames: std::mem::take(&mut cur), anchor: Some(a) }),
                Some(_) => {}
                None => cur.push(i),
            },
        }
    }
    if !cur.is_empty() {
        out.push(Group { frames: cur, anchor: None });
    }
    out
}

/// Merges one sample's stacks. `native` is the walk leaf first; `leaf_sp` the leaf's stack
/// pointer; `clean` whether the walk reached the outermost frame.
pub fn merge(native: &[NativeIn], leaf_sp: u64, clean: bool, py: &[PyIn], grouping: Grouping) -> Merged {
    let gs = groups(py, grouping);
    let mut owner: Vec<Option<usize>> = vec![None; gs.len()];
    if grouping == Grouping::EntryFrame {
        let mut sp = leaf_sp;
        let ranges: Vec<(u64, u64)> = native
            .iter()
            .map(|n| {
                let r = (sp, n.cfa);
                sp = n.cfa;
                r
            })
            .collect();
        for (g, o) in gs.iter().zip(owner.iter_mut()) {
            if let Some(a) = g.anchor {
                *o = ranges.iter().position(|&(lo, hi)| lo <= a && a < hi);
            }
        }
    } else {
        let evals: Vec<usize> = (0..native.len()).filter(|&i| native[i].eval).collect();
        if clean {
            for (o, e) in owner.iter_mut().rev().zip(evals.iter().rev()) {
                *o = Some(*e);
            }
        } else {
            for (o, e) in owner.iter_mut().zip(evals.iter()) {
                *o = Some(*e);
            }
        }
    }
    let mut pieces = Vec::with_capacity(native.len() + py.len());
    for i in 0..native.len() {
        let mut placed = false;
        for (g, o) in gs.iter().zip(&owner) {
            if *o == Some(i) {
                pieces.extend(g.frames.iter().map(|&f| Piece::Python(f)));
                placed = true;
            }
        }
        if !placed {
            pieces.push(Piece::Native(i));
        }
    }
    let unplaced = gs.iter().zip(&owner).filter(|(_, o)| o.is_none()).flat_map(|(g, _)| g.frames.clone()).collect();
    Merged { pieces, unplaced }
}

#[cfg(test)]
mod tests {
    use super::{Piece::*, *};

    fn native(cfas: &[u64], evals: &[usize]) -> Vec<NativeIn> {
        let mut sp = 0x1000;
        cfas.iter()
            .enumerate()
            .map(|(i, &cfa)| {
                let n = NativeIn { sp, cfa, eval: evals.contains(&i) };
                sp = cfa;
                n
            })
            .collect()
    }

    #[test]
    fn entry_frames_place_groups_by_address_whatever_the_counts() {
        // leaf C function, eval (frames 0,1 + entry at 0x1150), C callback machinery,
        // eval (frame 3 + entry at 0x1350), main.
        let n = native(&[0x1100, 0x1200, 0x1300, 0x1400, 0x1500], &[1, 3]);
        let py = [
            PyIn::default(),
            PyIn::default(),
            PyIn { anchor: Some(0x1150), ..Default::default() },
            PyIn::default(),
            PyIn { anchor: Some(0x1350), ..Default::default() },
        ];
        let m = merge(&n, 0x1000, true, &py, Grouping::EntryFrame);
        assert_eq!(m.pieces, [Native(0), Python(0), Python(1), Native(2), Python(3), Native(4)]);
        assert!(m.unplaced.is_empty());
        // An eval call still in its prologue (no group) stays native; a group whose native
        // frame was not reached is kept apart.
        let n = native(&[0x1100, 0x1200], &[1]);
        let m = merge(&n, 0x1000, false, &py, Grouping::EntryFrame);
        assert_eq!(m.pieces, [Native(0), Python(0), Python(1)]);
        assert_eq!(m.unplaced, [3]);
    }

    #[test]
    fn counting_pairs_from_the_root_on_clean_walks_and_from_the_leaf_otherwise() {
        // 3.11: groups end at is_entry frames.
        let e = PyIn { entry: true, ..Default::default() };
        let py = [PyIn::default(), e, e];
        let n = native(&[0x1100, 0x1200, 0x1300, 0x1400], &[0, 1, 2]);
        // Three eval frames, two groups: the leaf eval call has not linked its frame yet.
        let m = merge(&n, 0x1000, true, &py, Grouping::IsEntry);
        assert_eq!(m.pieces, [Native(0), Python(0), Python(1), Python(2), Native(3)]);
        let m = merge(&n, 0x1000, false, &py, Grouping::IsEntry);
        assert_eq!(m.pieces, [Python(0), Python(1), Python(2), Native(2), Native(3)]);
        // 3.8-3.10: one frame per eval call; more frames than eval calls: the rest unplaced.
        let m = merge(&n[..2], 0x1000, false, &[PyIn::default(); 3], Grouping::PerFrame);
        assert_eq!(m.pieces, [Python(0), Python(1)]);
        assert_eq!(m.unplaced, [2]);
    }
}
