//! Finds the interpreter of a Python 3.8-3.13 process without py-spy's full attach: the ELF
//! file that defines `_PyRuntime` (libpython when mapped, else the executable) gives its
//! address; `_PyRuntime.interpreters.head` the main interpreter; `sys.version` and `sys.path`
//! are read from memory. A few hundred KB of symbol tables and a dozen memory reads, where
//! py-spy parses every section and walks every stack (5-8 ms measured). Anything unexpected is
//! an error, and the caller falls back to py-spy.

use super::known::Known;
use super::objects::{self as obj};
use super::{elf, libpython_in_maps, xy_from_path};
use crate::proc::file::{read_text, ReadError};
use crate::proc::mem::{MemError, Memory};
use crate::proc::rootfs;

/// A process's interpreter, found.
pub struct Attached {
    pub known: Known,
    /// `sys.version`'s first word: `3.11.7`.
    pub version: String,
    pub sys_path: Vec<String>,
    pub sys_argv: Vec<String>,
}

/// Why the interpreter was not found.
pub enum Failed {
    /// Its maps or memory may not be read: nothing else will read them either.
    Denied(String),
    /// Not found this way (the caller may try py-spy).
    Other(String),
}

/// Attaches to `pid`, whose executable is `exe` (as /proc/<pid>/exe names it).
pub fn attach(pid: i32, exe: &str, m: &mut Memory) -> Result<Attached, Failed> {
    let maps = match read_text(format!("/proc/{pid}/maps")) {
        Ok(maps) => maps,
        Err(ReadError::Denied) => {
            return Err(Failed::Denied(
                "/proc/<pid>/maps and its memory may not be read (permission denied)".into(),
            ))
        }
        Err(e) => return Err(Failed::Other(format!("maps: {e}"))),
    };
    let lib = libpython_in_maps(&maps);
    let mut files: Vec<String> = lib.into_iter().collect();
    files.push(exe.to_string());
    let mut last = String::from("no _PyRuntime symbol");
    for path in &files {
        let Some(base) = elf::load_base(&maps, path) else {
            continue;
        };
        let opened = if path == exe {
            std::fs::File::open(format!("/proc/{pid}/exe"))
        } else {
            rootfs::open(pid, path)
        };
        let syms = opened
            .and_then(|f| elf::symbols(&f, base, &["_PyRuntime", "Py_Version", "_Py_TrueStruct"]));
        match syms {
            Ok(s) => match s[0] {
                Some(runtime) => {
                    let found = from_runtime(path, runtime, s[1], m).map(|mut a| {
                        a.known.py_true = s[2];
                        a
                    });
                    return found.map_err(|e| match e {
                        Err(MemError::Denied) => Failed::Denied(MemError::Denied.to_string()),
                        Err(e) => Failed::Other(e.to_string()),
                        Ok(msg) => Failed::Other(msg),
                    });
                }
                None => last = format!("{path}: no _PyRuntime symbol"),
            },
            Err(e) => last = format!("{path}: {e}"),
        }
    }
    Err(Failed::Other(last))
}

/// `Err(Ok(why))`: not an interpreter this reads; `Err(Err(e))`: memory could not be read.
fn from_runtime(
    path: &str,
    runtime: u64,
    py_version: Option<u64>,
    m: &mut Memory,
) -> Result<Attached, Result<String, MemError>> {
    let err = Err;
    // The minor version: from the file name (python3.11, libpython3.11.so), else Py_Version.
    let from_name = xy_from_path(path).and_then(|xy| {
        let (major, minor) = xy.split_once('.')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    });
    let (major, minor): (u64, u64) = match (from_name, py_version) {
        (Some(v), _) => v,
        (None, Some(at)) => {
            // PY_VERSION_HEX: 0x030B07F0 is 3.11.7
            let v = m.read_one(at, 4).map_err(err)?.unwrap_or_default();
            let hex = v.try_into().map(u32::from_ne_bytes).unwrap_or(0);
            (u64::from(hex >> 24), u64::from((hex >> 16) & 0xff))
        }
        (None, None) => return Err(Ok(format!("{path}: no Python version in its name"))),
    };
    let mut o = obj::offsets(major, minor).ok_or_else(|| {
        Ok(format!(
            "Python {major}.{minor}: not a version read directly"
        ))
    })?;
    if minor >= 13 {
        let b = m
            .read_one(runtime, obj::DEBUG_OFFSETS_SIZE)
            .map_err(err)?
            .unwrap_or_default();
        o = obj::debug_offsets(&o, &b).map(|(o, _)| o).ok_or_else(|| {
            Ok("_PyRuntime does not start with the debug offsets of a GIL build".into())
        })?;
    }
    let interp = m
        .read_one(runtime.wrapping_add(o.runtime_interp_head), 8)
        .map_err(err)?
        .and_then(|b| obj::u64_at(&b, 0))
        .filter(|a| *a != 0)
        .ok_or_else(|| Ok("_PyRuntime names no interpreter".into()))?;
    let mut known = Known::new(o, interp, interp.wrapping_add(o.interp_modules));
    let learnt = known.learn(m).map_err(err)?;
    let version = learnt
        .version
        .ok_or_else(|| Ok("sys.version could not be read".into()))?;
    if !version.starts_with(&format!("{major}.{minor}.")) {
        return Err(Ok(format!(
            "sys.version {version} is not Python {major}.{minor}"
        )));
    }
    Ok(Attached {
        known,
        version,
        sys_path: learnt.path,
        sys_argv: learnt.argv,
    })
}
