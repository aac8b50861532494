//! Go executables that link `crypto/tls`: where to put the probes of apm-ebpf/src/go_tls.rs.
//!
//! A Go binary is told by its `.go.buildinfo` section, which also gives the Go version: the
//! probes read arguments from registers, the calling convention of Go 1.17 and later on
//! amd64. The functions are found in the ELF symbol table or, in a binary built without one
//! (`-ldflags=-s -w`), in Go's own function table, `.gopclntab` (see [`pclntab`]). Go's stacks move, so a return probe's rewritten
//! return address is unsafe: the read's return program goes on each `RET` instruction of
//! `(*Conn).Read`, found by decoding the function.
mod pclntab;

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object, ObjectSection, ObjectSymbol, SectionKind};

use crate::ebpf::uprobes::GoTlsSites;

/// The first Go release whose internal calling convention passes arguments in registers on
/// amd64 (the probes read them there).
const REGISTER_ABI_MINOR: u32 = 17;

const WRITE: &str = "crypto/tls.(*Conn).Write";
const READ: &str = "crypto/tls.(*Conn).Read";
/// The two sides' handshakes, run once per connection (`handshakeContext` and the exported
/// `Handshake*` are not hooked: `Read` and `Write` call them on every call, and each hit is a
/// trap: three more per HTTP/1 request of a Go server, measured).
const HANDSHAKES: [&str; 2] = [
    "crypto/tls.(*Conn).serverHandshake",
    "crypto/tls.(*Conn).clientHandshake",
];

/// What one Go executable is hooked with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoTlsHooks {
    /// As its build info says (`go1.19.8`).
    pub version: String,
    pub sites: GoTlsSites,
}

/// Why a Go executable cannot be hooked. (Not Go at all is `Ok(None)`.)
#[derive(Debug, thiserror::Error)]
pub enum GoBinaryError {
    #[error("not a readable ELF file: {0}")]
    Elf(#[from] object::Error),
    #[error("Go build info unreadable")]
    BuildInfo,
    #[error("built with {0}: the probes need Go 1.17 or later (arguments in registers)")]
    TooOld(String),
    #[error("built with {0} without a symbol table (stripped) nor .gopclntab")]
    Stripped(String),
    #[error("built with {0}: its .gopclntab function table is not in a known layout")]
    Pclntab(String),
    #[error("{function} is not in the file's sections")]
    Outside { function: &'static str },
    #[error("{function}: no RET instruction found")]
    NoReturn { function: &'static str },
}

/// Inspects the ELF image `data`: `Ok(None)` when it is not a Go program or does not use
/// `crypto/tls`.
pub fn inspect(data: &[u8]) -> Result<Option<GoTlsHooks>, GoBinaryError> {
    let file = object::File::parse(data)?;
    let Some(info) = file.section_by_name(".go.buildinfo") else {
        return Ok(None);
    };
    let version = build_version(&file, info.data()?).ok_or(GoBinaryError::BuildInfo)?;
    if minor_version(&version).is_some_and(|m| m < REGISTER_ABI_MINOR) {
        return Err(GoBinaryError::TooOld(version));
    }
    let wanted = [WRITE, READ, HANDSHAKES[0], HANDSHAKES[1]];
    let found = match symbols(&file, &wanted) {
        Some(found) => found,
        // Stripped (`-ldflags=-s`): Go's own function table stays, the runtime needs it.
        None => match file.section_by_name(".gopclntab") {
            Some(table) => pclntab::functions(table.data()?, text_start(&file), &wanted)
                .ok_or_else(|| GoBinaryError::Pclntab(version.clone()))?,
            None => return Err(GoBinaryError::Stripped(version)),
        },
    };
    let (Some(write), Some(read)) = (found[0], found[1]) else {
        return Ok(None);
    };
    let read_returns = returns(&file, read, READ)?;
    let mut handshakes = Vec::new();
    for (place, name) in found[2..].iter().zip(HANDSHAKES) {
        if let Some((addr, _)) = place {
            handshakes.push(file_offset(&file, *addr, name)?);
        }
    }
    Ok(Some(GoTlsHooks {
        version,
        sites: GoTlsSites {
            write: file_offset(&file, write.0, WRITE)?,
            read: file_offset(&file, read.0, READ)?,
            read_returns,
            handshakes,
        },
    }))
}

/// (address, size) of each of `wanted` in the ELF symbol table; None without one.
fn symbols(file: &object::File<'_>, wanted: &[&str]) -> Option<Vec<Option<(u64, u64)>>> {
    let mut found = vec![None; wanted.len()];
    let mut any = false;
    for sym in file.symbols() {
        any = true;
        let Ok(name) = sym.name() else { continue };
        if let Some(i) = wanted.iter().position(|w| *w == name) {
            found[i] = Some((sym.address(), sym.size()));
        }
    }
    any.then_some(found)
}

/// Where `.text` starts: the base of the function table's entry offsets when its own field
/// is relocated at run time (position-independent builds leave it 0 in the file).
fn text_start(file: &object::File<'_>) -> u64 {
    file.section_by_name(".text").map_or(0, |s| s.address())
}

/// The Go version in a `.go.buildinfo` section: after the 14-byte magic, the pointer size
/// and a flags byte. Go 1.18+ (flag 2) puts the version inline at offset 32, length-prefixed
/// by a varint; before, offset 16 holds the address of a Go string header.
fn build_version(file: &object::File<'_>, info: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !info.starts_with(MAGIC) || info.len() < 32 {
        return None;
    }
    let ptr_size = usize::from(info[14]);
    let flags = info[15];
    if flags & 2 != 0 {
        let (len, used) = uvarint(&info[32..])?;
        let start = 32 + used;
        let bytes = info.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
        return String::from_utf8(bytes.to_vec()).ok();
    }
    if ptr_size != 8 {
        return None;
    }
    let word = |b: &[u8]| -> Option<u64> { Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)) };
    let header = read_at(file, word(&info[16..])?, 16)?;
    let (ptr, len) = (word(&header)?, word(header.get(8..)?)?);
    String::from_utf8(read_at(file, ptr, usize::try_from(len).ok()?.min(64))?).ok()
}

/// `len` bytes at virtual address `addr`, from the section holding them.
fn read_at(file: &object::File<'_>, addr: u64, len: usize) -> Option<Vec<u8>> {
    file.sections().find_map(|s| {
        let data = s.data_range(addr, len as u64).ok()??;
        Some(data.to_vec())
    })
}

/// An unsigned LEB128 varint: (value, bytes used).
fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in b.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// `1.19` of `go1.19.8`; None for versions that do not say (`devel ...`), taken as recent.
fn minor_version(version: &str) -> Option<u32> {
    let rest = version.strip_prefix("go1.")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The file offset of the code at virtual address `addr`.
fn file_offset(
    file: &object::File<'_>,
    addr: u64,
    function: &'static str,
) -> Result<u64, GoBinaryError> {
    file.sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .find_map(|s| {
            let (offset, size) = s.file_range()?;
            let start = s.address();
            (addr >= start && addr - start < size).then(|| offset + (addr - start))
        })
        .ok_or(GoBinaryError::Outside { function })
}

/// The file offsets of the `RET` instructions of the function at `(address, size)`.
fn returns(
    file: &object::File<'_>,
    (addr, size): (u64, u64),
    function: &'static str,
) -> Result<Vec<u64>, GoBinaryError> {
    let code = file
        .sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .find_map(|s| s.data_range(addr, size).ok().flatten())
        .ok_or(GoBinaryError::Outside { function })?;
    let start = file_offset(file, addr, function)?;
    let found = ret_offsets(code, addr);
    if found.is_empty() {
        return Err(GoBinaryError::NoReturn { function });
    }
    Ok(found.into_iter().map(|off| start + off).collect())
}

/// Offsets (from the start of `code`, loaded at `addr`) of its `RET` instructions.
fn ret_offsets(code: &[u8], addr: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut found = Vec::new();
    while decoder.can_decode() {
        let instr = decoder.decode();
        if instr.mnemonic() == Mnemonic::Ret {
            found.push(instr.ip() - addr);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(minor_version("go1.19.8"), Some(19));
        assert_eq!(minor_version("go1.21rc2"), Some(21));
        assert_eq!(minor_version("devel go1.23-abc"), None);
        assert_eq!(uvarint(&[0x08, 0xff]), Some((8, 1)));
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(uvarint(&[0x80; 11]), None);
    }

    #[test]
    fn finds_returns_not_c3_bytes() {
        // mov eax, 0xc3; ret; int3; mov rbx, [rsp+8]; ret
        let code = [
            0xb8, 0xc3, 0x00, 0x00, 0x00, 0xc3, 0xcc, 0x48, 0x8b, 0x5c, 0x24, 0x08, 0xc3,
        ];
        assert_eq!(ret_offsets(&code, 0x40_1000), vec![5, 12]);
    }

    #[test]
    fn a_non_go_elf_is_none() {
        let exe = std::fs::read("/proc/self/exe").expect("own executable");
        assert!(matches!(inspect(&exe), Ok(None)));
        assert!(inspect(b"not an elf").is_err());
    }
}
