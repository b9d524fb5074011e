//! Build script: the commit this binary is built from, for `--version` and the report's
//! `tool.commit` (env OTEL_FORKCHECK_COMMIT): `git rev-parse --short HEAD` when the crate is the
//! top of a git checkout (a plain checkout or a worktree), else "unknown" (the sdist, a crate
//! from crates.io, no git installed). Reruns when HEAD moves: on .git/HEAD (a branch switch)
//! and on the ref HEAD points to (a commit), or, when that ref is packed, on packed-refs and the
//! folder its loose file would be written to.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The commit and the files whose change means HEAD may have moved, when `dir` is the top of
/// a git checkout. A crate unpacked inside some other repository (an sdist in a monorepo) is
/// not: its commit would be the other repository's.
fn commit(dir: &Path) -> Option<(String, Vec<PathBuf>)> {
    let top = PathBuf::from(git(dir, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    let hash = git(dir, &["rev-parse", "--short", "HEAD"])?;
    let mut watch = Vec::new();
    // In a worktree, HEAD is in its own git dir and the refs in the common one.
    let git_dir = PathBuf::from(git(dir, &["rev-parse", "--absolute-git-dir"])?);
    watch.push(git_dir.join("HEAD"));
    let common = git(dir, &["rev-parse", "--git-common-dir"]).map(|c| {
        let c = PathBuf::from(c);
        if c.is_absolute() {
            c
        } else {
            dir.join(c)
        }
    });
    if let (Some(common), Some(name)) = (
        common,
        git(dir, &["rev-parse", "--symbolic-full-name", "HEAD"]),
    ) {
        // "HEAD" itself when detached: then HEAD holds the hash and is already watched.
        if name.starts_with("refs/") {
            let loose = common.join(&name);
            if loose.exists() {
                watch.push(loose);
            } else {
                // Packed: the next commit writes the loose file into its folder.
                watch.push(common.join("packed-refs"));
                if let Some(folder) = loose.parent() {
                    watch.push(folder.to_path_buf());
                }
            }
        }
    }
    // A path that does not exist would make cargo rerun this script on every build.
    watch.retain(|p| p.exists());
    Some((hash, watch))
}

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed=build.rs");
    let hash = match commit(&dir) {
        Some((hash, watch)) => {
            for p in watch {
                println!("cargo:rerun-if-changed={}", p.display());
            }
            hash
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=OTEL_FORKCHECK_COMMIT={hash}");
}
