//! Go's function table, `.gopclntab`: what the runtime itself uses for stack traces, so it
//! stays in binaries built without an ELF symbol table (`-ldflags=-s -w`).
//!
//! Layouts read (the header's magic tells them apart; every offset is from the header):
//! - Go 1.16 and 1.17 (`0xfffffffa`): header `magic u32, pad u8 ×2, minLC u8, ptrSize u8,
//!   nfunc, nfiles, funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset`
//!   (pointer-sized); the function table at `pclnOffset` holds `nfunc + 1` pairs of
//!   pointer-sized `(entry, funcoff)`; each `_func` at `pclnOffset + funcoff` starts with its
//!   pointer-sized entry, then `nameoff i32` into the name table at `funcnameOffset`.
//! - Go 1.18 and 1.19 (`0xfffffff0`), 1.20 and later (`0xfffffff1`): the header gains
//!   `textStart` after `nfiles`; the table's pairs are `(entryoff u32, funcoff u32)`, entries
//!   relative to `textStart`, and `_func` starts with `entryoff u32, nameoff i32`.
//!
//! The last pair of the table marks the end of the last function: a function's size is the
//! distance to the next entry.

const GO116: u32 = 0xffff_fffa;
const GO118: u32 = 0xffff_fff0;
const GO120: u32 = 0xffff_fff1;

/// (address, size) of each of `wanted` found in the table `data` (the `.gopclntab` section);
/// `text` is the address of `.text`, used when the header's own text start is 0 (relocated
/// at run time in position-independent builds). None when the layout is not one of the
/// known ones or the table is cut short.
pub(super) fn functions(
    data: &[u8],
    text: u64,
    wanted: &[&str],
) -> Option<Vec<Option<(u64, u64)>>> {
    let magic = u32::from_le_bytes(data.get(..4)?.try_into().ok()?);
    let ptr = usize::from(*data.get(7)?);
    if ptr != 8 || data.get(4..6)? != [0, 0] {
        return None;
    }
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            data.get(at..at.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            data.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let offset = |v: u64| usize::try_from(v).ok();
    let nfunc = offset(word(8)?)?;
    let relative = match magic {
        GO118 | GO120 => true,
        GO116 => false,
        _ => return None,
    };
    // Header fields after nfunc and nfiles (and textStart where there is one).
    let base = if relative { 32 } else { 24 };
    let text_start = if relative {
        Some(word(24)?).filter(|t| *t != 0).unwrap_or(text)
    } else {
        0
    };
    let funcnames = offset(word(base)?)?;
    let pcln = offset(word(base + 32)?)?;
    // One table entry: (entry address, offset of its _func).
    let pair = if relative { 8 } else { 16 };
    let entry_at = |i: usize| -> Option<(u64, usize)> {
        let at = pcln.checked_add(i.checked_mul(pair)?)?;
        if relative {
            Some((
                text_start + u64::from(u32_at(at)?),
                u32_at(at + 4)? as usize,
            ))
        } else {
            Some((word(at)?, offset(word(at + 8)?)?))
        }
    };
    let name_field = if relative { 4 } else { 8 };
    let mut found = vec![None; wanted.len()];
    for i in 0..nfunc {
        let (entry, funcoff) = entry_at(i)?;
        let func = pcln.checked_add(funcoff)?;
        let nameoff = usize::try_from(u32_at(func + name_field)? as i32).ok()?;
        let name_at = funcnames.checked_add(nameoff)?;
        let name = data.get(name_at..)?;
        let name = &name[..name.iter().position(|b| *b == 0)?];
        if let Some(w) = wanted.iter().position(|w| w.as_bytes() == name) {
            let (next, _) = entry_at(i + 1)?;
            found[w] = Some((entry, next.checked_sub(entry)?));
        }
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Go 1.18-layout table of two functions, built by hand: `main.a` at text+0x10 (0x20
    /// long) and `main.b` at text+0x30, ending at text+0x50.
    fn table(magic: u32, text_start: u64) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend(magic.to_le_bytes());
        t.extend([0, 0, 1, 8]);
        let (funcnames, pcln) = (80u64, 96u64);
        for field in [2, 0, text_start, funcnames, 0, 0, 0, pcln] {
            t.extend(u64::to_le_bytes(field));
        }
        assert_eq!(t.len(), 72);
        t.resize(80, 0);
        t.extend(b"main.a\0main.b\0\0\0");
        assert_eq!(t.len(), 96);
        // The table: three pairs, then the two _func records (entryoff, nameoff).
        for (entry, func) in [(0x10u32, 24u32), (0x30, 32), (0x50, 0)] {
            t.extend(entry.to_le_bytes());
            t.extend(func.to_le_bytes());
        }
        for (entry, name) in [(0x10u32, 0i32), (0x30, 7)] {
            t.extend(entry.to_le_bytes());
            t.extend(name.to_le_bytes());
        }
        t
    }

    #[test]
    fn finds_functions_and_sizes() {
        let t = table(GO118, 0x40_1000);
        let found = functions(&t, 0x99_0000, &["main.b", "main.zz", "main.a"]);
        assert_eq!(
            found,
            Some(vec![Some((0x40_1030, 0x20)), None, Some((0x40_1010, 0x20))])
        );
        // Text start relocated at run time: the section's address instead.
        let t = table(GO120, 0);
        let found = functions(&t, 0x50_0000, &["main.a"]);
        assert_eq!(found, Some(vec![Some((0x50_0010, 0x20))]));
    }

    #[test]
    fn unknown_or_cut_tables_are_none() {
        assert_eq!(functions(&table(0xffff_fffb, 0), 0, &["main.a"]), None);
        let t = table(GO118, 0x40_1000);
        assert_eq!(functions(&t[..100], 0, &["main.a"]), None);
        assert_eq!(functions(b"", 0, &["main.a"]), None);
    }
}
