//! Symbol addresses in a running process from the ELF file it mapped: the headers and symbol
//! tables are read from the file (a few hundred KB, not the file), the load bias from where
//! the process mapped the file's first page.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Refused: a symbol table this large is not one.
const MAX_SECTION: u64 = 64 << 20;

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read_at(f: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    if len > MAX_SECTION {
        return Err(bad("ELF section too large"));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Where `path` starts in a process: the lowest mapping of its first page, from the text of
/// /proc/<pid>/maps.
pub fn load_base(maps: &str, path: &str) -> Option<u64> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let offset = f.nth(1)?;
            let p = f.nth(2)?;
            (p == path && u64::from_str_radix(offset, 16).ok()? == 0)
                .then(|| u64::from_str_radix(range.split('-').next()?, 16).ok())
                .flatten()
        })
        .min()
}

/// The addresses of `names` in a process that mapped `f` (a 64-bit little-endian ELF file)
/// at `base`: the dynamic symbols are searched first, the full table after.
pub fn symbols(f: &File, base: u64, names: &[&str]) -> io::Result<Vec<Option<u64>>> {
    let eh = read_at(f, 0, 64)?;
    if eh[..4] != *b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let (phoff, shoff) = (u64_at(&eh, 32), u64_at(&eh, 40));
    let (phentsize, phnum) = (u16_at(&eh, 54) as u64, u16_at(&eh, 56) as u64);
    let (shentsize, shnum) = (u16_at(&eh, 58) as u64, u16_at(&eh, 60) as u64);
    if phentsize < 56 || shentsize < 64 {
        return Err(bad("unexpected ELF header sizes"));
    }
    // The bias: where the segment holding file offset 0 was put, minus its address.
    let ph = read_at(f, phoff, phentsize * phnum)?;
    let first = (0..phnum as usize)
        .map(|i| &ph[i * phentsize as usize..])
        .find(|p| u32_at(p, 0) == 1 && u64_at(p, 8) == 0)
        .ok_or_else(|| bad("no loadable segment at offset 0"))?;
    let bias = base.wrapping_sub(u64_at(first, 16) & !0xfff);
    let sh = read_at(f, shoff, shentsize * shnum)?;
    let section = |i: usize| -> Option<&[u8]> {
        sh.get(i * shentsize as usize..(i + 1) * shentsize as usize)
    };
    let mut out = vec![None; names.len()];
    // SHT_DYNSYM (11), then SHT_SYMTAB (2).
    for wanted in [11u32, 2] {
        for i in 0..shnum as usize {
            let Some(s) = section(i).filter(|s| u32_at(s, 4) == wanted) else {
                continue;
            };
            let Some(strs) = section(u32_at(s, 40) as usize) else {
                continue;
            };
            let syms = read_at(f, u64_at(s, 24), u64_at(s, 32))?;
            let strtab = read_at(f, u64_at(strs, 24), u64_at(strs, 32))?;
            for sym in syms.chunks_exact(24) {
                let at = u32_at(sym, 0) as usize;
                // Defined symbols only (st_shndx != SHN_UNDEF).
                if at == 0 || u16_at(sym, 6) == 0 {
                    continue;
                }
                let Some(name) = strtab.get(at..).and_then(|s| s.split(|&c| c == 0).next()) else {
                    continue;
                };
                if let Some(k) = names.iter().position(|n| n.as_bytes() == name) {
                    out[k].get_or_insert(bias.wrapping_add(u64_at(sym, 8)));
                }
            }
            if out.iter().all(Option::is_some) {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_of_a_mapped_file() {
        let maps = "\
00400000-0041f000 r--p 00000000 fd:01 12 /usr/bin/python3.11
0041f000-006d2000 r-xp 0001f000 fd:01 12 /usr/bin/python3.11
7f00aa000000-7f00aa064000 r--p 00000000 fd:01 99 /opt/lib/libpython3.8.so.1.0
7f00aa064000-7f00aa300000 r-xp 00064000 fd:01 99 /opt/lib/libpython3.8.so.1.0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";
        assert_eq!(load_base(maps, "/usr/bin/python3.11"), Some(0x400000));
        assert_eq!(
            load_base(maps, "/opt/lib/libpython3.8.so.1.0"),
            Some(0x7f00aa000000)
        );
        assert_eq!(load_base(maps, "/nowhere"), None);
    }

    #[no_mangle]
    static OTEL_FORKCHECK_ELF_TEST_MARKER: u64 = 0x5eed;

    #[test]
    fn symbols_of_this_test_binary() {
        // Our own executable, mapped by ourselves: the symbol's address is where it lives.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_string_lossy();
        let base = load_base(&maps, &exe).expect("the test binary is mapped");
        let f = File::open(&*exe).unwrap();
        let names = ["OTEL_FORKCHECK_ELF_TEST_MARKER", "no_such_symbol_anywhere"];
        let got = symbols(&f, base, &names).unwrap();
        let marker = std::hint::black_box(&OTEL_FORKCHECK_ELF_TEST_MARKER) as *const u64;
        assert_eq!(got, vec![Some(marker as u64), None]);
        assert!(symbols(&File::open("/proc/self/status").unwrap(), 0, &["x"]).is_err());
    }
}
