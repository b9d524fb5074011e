//! Without CAP_SYS_PTRACE (Docker's and Kubernetes' default), `check` goes on with the /proc
//! facts it can read and says what it could not read and the one setting that fixes it, and it
//! fails (FC305) rather than pass on what it did not see.
//! Root without CAP_SYS_PTRACE may not read another root process's environ, fds or memory: the
//! tool is started under `setpriv` with the capability dropped from its bounding set.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        // The fixture runs in its own process group: end all of it.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

#[test]
fn without_cap_sys_ptrace_the_check_goes_on_and_says_what_it_could_not_read() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED without_cap_sys_ptrace...: needs root (CI runs as root)");
        return;
    }
    use std::os::unix::process::CommandExt;
    // The interpreter itself, not a version manager's shim that would sit above it.
    let exe = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    let python = String::from_utf8_lossy(&exe.stdout).trim().to_string();
    let parent = Command::new(&python)
        .args([
            "-c",
            "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nelse:\n    time.sleep(60)",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        .process_group(0)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let g = Group(parent);
    let pid = g.0.id();
    let t0 = Instant::now();
    while children(pid).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the fixture never forked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-sys_ptrace", "--inh-caps", "-sys_ptrace"])
        .arg(env!("CARGO_BIN_EXE_otel-forkcheck"))
        .args([
            "--pid",
            &pid.to_string(),
            "--window",
            "0",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(2), "it gave up: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stderr}"));
    let procs = v["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 2, "{v:#}");
    assert_eq!(procs[0]["role"], "master");
    assert_eq!(procs[1]["role"], "worker");
    // Blind is not healthy: FC305 names both, with what each was refused, and fails the check.
    let child = procs[1]["pid"].as_i64().unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(v["verdict"], "fail");
    let codes: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, vec!["FC305"], "{:#}", v["findings"]);
    let pids: Vec<i64> = v["findings"][0]["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    assert_eq!(pids, vec![pid as i64, child]);
    for p in procs {
        let refused: Vec<&str> = p["unreadable"]
            .as_array()
            .unwrap_or_else(|| panic!("nothing said refused: {p:#}"))
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect();
        for what in ["exe", "fd", "memory"] {
            assert!(refused.contains(&what), "{what} not in {refused:?}");
        }
    }
    let notes: Vec<&str> = v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    // What could not be read is said, with the setting that fixes it.
    let fd = notes
        .iter()
        .find(|n| n.contains("/proc/<pid>/fd"))
        .unwrap_or_else(|| panic!("no note on fd: {notes:?}"));
    assert!(
        fd.contains("CAP_SYS_PTRACE") && fd.contains("--cap-add SYS_PTRACE"),
        "{fd}"
    );
    assert!(fd.contains(&pid.to_string()), "{fd}");
    let names = notes
        .iter()
        .find(|n| n.starts_with("Python thread names unavailable"))
        .unwrap_or_else(|| panic!("no note on Python names: {notes:?}"));
    assert!(names.contains("CAP_SYS_PTRACE"), "{names}");
    // The same tree with the capability: nothing is said to be unreadable.
    let full = Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"))
        .args([
            "--pid",
            &pid.to_string(),
            "--window",
            "0",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&full.stdout).unwrap();
    let text = v["notes"].to_string();
    assert!(!text.contains("permission denied"), "{text}");
    assert!(!v["findings"].to_string().contains("FC305"), "{v:#}");
    let procs = v["processes"].as_array().unwrap();
    assert!(procs.iter().all(|p| p.get("unreadable").is_none()), "{v:#}");
}
