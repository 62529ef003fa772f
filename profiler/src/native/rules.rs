//! x86-64 unwind rules: the few shapes of DWARF CFI the kernel-side walker will evaluate, and
//! the conversion from a gimli CFI row to one of them.
//!
//! Everything else DWARF can say (CFA from another register, arbitrary expressions, return
//! address anywhere but CFA-8) becomes [`Cfa::Invalid`]: the walk stops there with a marker
//! frame (or falls back to frame pointers where the binary is known to keep them).

use gimli::{CfaRule, Encoding, Format, Operation, Reader, RegisterRule, UnwindSection, UnwindTableRow, X86_64};

/// How to find the Canonical Frame Address (the caller's rsp; the return address is at CFA-8).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Cfa {
    /// No usable unwind info here (gap between FDEs, unsupported rule): stop, marked.
    Invalid,
    /// The return address is undefined: the outermost frame (`_start`, thread start). A clean end.
    End,
    /// CFA = rsp + n.
    Rsp(i32),
    /// CFA = rbp + n.
    Rbp(i32),
    /// CFA = *(rsp + pre) + post.
    DerefRsp { pre: i32, post: i32 },
    /// CFA = *(rbp + pre) + post (GCC's DRAP stack realignment: `*(rbp-8)`).
    DerefRbp { pre: i32, post: i32 },
    /// The PLT's one expression for all of its 16-byte entries:
    /// CFA = rsp + 8 + (((rip & 15) >= threshold) ? 8 : 0).
    Plt(u8),
    /// Signal trampoline (`__restore_rt`, CIE augmentation 'S'): rip/rsp/rbp come from the
    /// `ucontext` the kernel pushed, at rsp + 40.
    Signal,
}

/// Where the caller's rbp is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Rbp {
    /// rbp is unchanged in this frame (not yet pushed, or already restored).
    Same,
    /// Saved at CFA + n.
    AtCfa(i32),
    /// Saved at rbp + n (DRAP functions: `DW_CFA_expression rbp: DW_OP_breg6 0`).
    AtRbp(i32),
    /// Not recoverable (undefined, or a rule we do not evaluate): the caller's rbp is unknown.
    Lost,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Rule {
    pub cfa: Cfa,
    pub rbp: Rbp,
}

impl Rule {
    pub const INVALID: Rule = Rule { cfa: Cfa::Invalid, rbp: Rbp::Same };
    pub const END: Rule = Rule { cfa: Cfa::End, rbp: Rbp::Same };
    pub const SIGNAL: Rule = Rule { cfa: Cfa::Signal, rbp: Rbp::Same };

    /// The frame-pointer frame: CFA = rbp + 16, caller's rbp at CFA - 16.
    pub fn is_frame_pointer(&self) -> bool {
        self.cfa == Cfa::Rbp(16) && self.rbp == Rbp::AtCfa(-16)
    }
}

/// Why a row became `Invalid` (for the report).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Unsupported {
    CfaOtherRegister(u16),
    CfaExpression,
    ReturnAddressRule,
}

const ENCODING: Encoding = Encoding { address_size: 8, format: Format::Dwarf32, version: 4 };

/// Converts one CFI row. `Err` says why it is not representable.
pub fn convert<R: Reader, S: UnwindSection<R>, T: gimli::UnwindContextStorage<R::Offset>>(
    row: &UnwindTableRow<R::Offset, T>,
    section: &S,
) -> Result<Rule, Unsupported> {
    // Return address: CFA-8 on x86-64, or undefined in the outermost frame.
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => return Ok(Rule::END),
        Some(RegisterRule::Offset(-8)) => {}
        _ => return Err(Unsupported::ReturnAddressRule),
    }
    let cfa = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let off = i32::try_from(*offset).map_err(|_| Unsupported::CfaExpression)?;
            if *register == X86_64::RSP {
                Cfa::Rsp(off)
            } else if *register == X86_64::RBP {
                Cfa::Rbp(off)
            } else {
                // r10/r11/rax-based CFAs (hand-written asm, DRAP prologues) are only valid in a
                // leaf frame, whose other registers the sampler does not have.
                return Err(Unsupported::CfaOtherRegister(register.0));
            }
        }
        CfaRule::Expression(e) => {
            let expr = e.get(section).map_err(|_| Unsupported::CfaExpression)?;
            cfa_expression(expr).ok_or(Unsupported::CfaExpression)?
        }
    };
    let rbp = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => Rbp::Same,
        Some(RegisterRule::Offset(n)) => i32::try_from(n).map(Rbp::AtCfa).unwrap_or(Rbp::Lost),
        Some(RegisterRule::Expression(e)) => match e.get(section).ok().and_then(rbp_expression) {
            Some(n) => Rbp::AtRbp(n),
            None => Rbp::Lost,
        },
        Some(_) => Rbp::Lost,
    };
    Ok(Rule { cfa, rbp })
}

fn ops<R: Reader>(expr: gimli::Expression<R>) -> Option<Vec<Operation<R, R::Offset>>> {
    let mut it = expr.operations(ENCODING);
    let mut out = Vec::new();
    while let Some(op) = it.next().ok()? {
        out.push(op);
        if out.len() > 16 {
            return None;
        }
    }
    Some(out)
}

fn cfa_expression<R: Reader>(expr: gimli::Expression<R>) -> Option<Cfa> {
    let ops = ops(expr)?;
    use Operation as O;
    match ops.as_slice() {
        // breg7 8; breg16 0; lit15; and; lit<N>; ge; lit3; shl; plus
        [
            O::RegisterOffset { register: r1, offset: 8, .. },
            O::RegisterOffset { register: r2, offset: 0, .. },
            O::UnsignedConstant { value: 15 },
            O::And,
            O::UnsignedConstant { value: th },
            O::Ge,
            O::UnsignedConstant { value: 3 },
            O::Shl,
            O::Plus,
        ] if *r1 == X86_64::RSP && *r2 == X86_64::RA && *th < 16 => Some(Cfa::Plt(*th as u8)),
        [O::RegisterOffset { register, offset, .. }, O::Deref { size: 8, space: false, .. }, rest @ ..] => {
            let pre = i32::try_from(*offset).ok()?;
            let post = match rest {
                [] => 0,
                [O::PlusConstant { value }] => i32::try_from(*value).ok()?,
                _ => return None,
            };
            if *register == X86_64::RBP {
                Some(Cfa::DerefRbp { pre, post })
            } else if *register == X86_64::RSP {
                Some(Cfa::DerefRsp { pre, post })
            } else {
                None
            }
        }
        _ => None,
    }
}

/// `DW_OP_breg6 n`: rbp saved at rbp + n.
fn rbp_expression<R: Reader>(expr: gimli::Expression<R>) -> Option<i32> {
    let ops = ops(expr)?;
    match ops.as_slice() {
        [Operation::RegisterOffset { register, offset, .. }] if *register == X86_64::RBP => i32::try_from(*offset).ok(),
        _ => None,
    }
}
