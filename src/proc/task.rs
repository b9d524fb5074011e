//! Per-task facts from /proc/<pid>/task/<tid>/{stat,status,syscall}.
//!
//! These are the "is it alive, is it moving" facts: a metric reader stuck on a lock shows up as
//! a futex with no timeout (4th argument 0) and a `voluntary_ctxt_switches` count that does not
//! move over the window, while a healthy one wakes once per export interval.
//!
//! Each file is read once per sample. The main thread's stat/status double as the process's
//! (ppid, start time, uid are the same for the whole thread group).
//!
//! Ids and pid namespaces: a task has one id per pid namespace it lives in (`NSpid:` in its
//! status, from the namespace of the /proc we read down to its own). /proc/<pid>/task lists the
//! first; what a process knows about itself (`gettid()`, and so the interpreter's
//! `native_thread_id`) is the last. Every sample keeps both, so that a tree in a container reads
//! the same from the host, from a sidecar sharing its pid namespace, and from inside.

use super::file::{numeric_entries, read_text, ReadError, ReadResult};

/// The syscall a thread is in, from /proc/<pid>/task/<tid>/syscall.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Syscall {
    /// Syscall number (x86_64 numbering on x86_64), or -1 when running in user space.
    pub nr: i64,
    /// Name when known (`futex`, `poll`, ...).
    #[serde(default)]
    pub name: String,
    /// The six arguments as read (hex strings in the file, numbers here).
    #[serde(default)]
    pub args: Vec<u64>,
}

/// Fields of /proc/<pid>/task/<tid>/stat that observe uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskStat {
    pub comm: String,
    pub state: String,
    pub ppid: i32,
    /// Start time in clock ticks since boot.
    pub starttime: u64,
    /// Address-space markers (fields 26, 47, 48: start of code, of the heap, of argv).
    /// Forks share them; every exec randomises the heap and stack. 0 when hidden (no ptrace
    /// access) or on kernels that do not show them.
    pub start_code: u64,
    pub start_brk: u64,
    pub arg_start: u64,
}

/// Parses a stat line. comm sits in parentheses and may itself hold ')' or spaces, so the
/// fields are counted from the last ')'.
pub fn parse_stat(text: &str) -> Option<TaskStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let comm = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // Field n of stat(5) is fields[n - 3]: state is field 3.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(TaskStat {
        comm,
        state: fields.first()?.to_string(),
        ppid: fields.get(1)?.parse().ok()?,
        starttime: field(22)?,
        start_code: field(26).unwrap_or(0),
        start_brk: field(47).unwrap_or(0),
        arg_start: field(48).unwrap_or(0),
    })
}

/// CPU time and exit state of a process from its /proc/<pid>/stat (a zombie keeps both until
/// its parent reaps it): what `run` needs to tell a child that worked from an idle one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuExit {
    pub state: char,
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
    /// Start time, clock ticks since boot.
    pub starttime: u64,
    /// Process group id (field 5).
    pub pgrp: i32,
    /// The wait status (field 52, Linux 3.5+): meaningful once the process is a zombie.
    pub exit_code: Option<i32>,
    /// The command name (field 2), which an exec changes and a zombie keeps.
    pub comm: String,
}

/// A wait status (stat's field 52, a zombie's) as (exit status, signal that killed it): one of
/// the two is set.
pub fn split_wait_status(code: i32) -> (Option<i32>, Option<i32>) {
    match code & 0x7f {
        0 => (Some((code >> 8) & 0xff), None),
        signal => (None, Some(signal)),
    }
}

/// Parses the fields of [`CpuExit`] from a stat line.
pub fn parse_cpu_exit(text: &str) -> Option<CpuExit> {
    let close = text.rfind(')')?;
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(CpuExit {
        state: fields.first()?.chars().next()?,
        cpu_ticks: field(14)? + field(15)?,
        starttime: field(22)?,
        pgrp: fields.get(5 - 3)?.parse().ok()?,
        exit_code: fields.get(52 - 3).and_then(|v| v.parse::<i32>().ok()),
        comm: text[text.find('(')? + 1..close].to_string(),
    })
}

/// Fields of /proc/<pid>/task/<tid>/status that observe uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskStatus {
    pub tgid: i32,
    pub uid: u32,
    /// This task's id in each pid namespace, outermost (the /proc we read) first: the `NSpid:`
    /// line of /proc/<pid>/task/<tid>/status (for a thread, its thread ids). Empty on kernels
    /// without the line (before 4.1).
    pub nspid: Vec<i32>,
    pub voluntary_ctxt_switches: u64,
}

pub fn parse_status(text: &str) -> TaskStatus {
    let mut st = TaskStatus::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Tgid" => st.tgid = value.parse().unwrap_or(0),
            // Real, effective, saved, fs: the real uid is the owner people mean.
            "Uid" => {
                st.uid = value
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            }
            "NSpid" => {
                st.nspid = value
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            }
            "voluntary_ctxt_switches" => st.voluntary_ctxt_switches = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    st
}

/// Parses /proc/<pid>/task/<tid>/syscall: `NR a1 .. a6 sp pc` (hex args), `running`, or
/// `-1 sp pc` (blocked outside a system call). Both of the latter give nr -1.
pub fn parse_syscall(text: &str) -> Option<Syscall> {
    let text = text.trim();
    if text == "running" {
        return Some(Syscall {
            nr: -1,
            name: "running".into(),
            args: Vec::new(),
        });
    }
    let mut fields = text.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    if nr < 0 {
        return Some(Syscall {
            nr: -1,
            name: String::new(),
            args: Vec::new(),
        });
    }
    let args: Vec<u64> = fields.take(6).filter_map(parse_hex).collect();
    Some(Syscall {
        nr,
        name: syscall_name(nr).to_string(),
        args,
    })
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// Names of the system calls a blocked thread is usually found in. The file gives the number
/// in the target's native ABI, which is the machine's for the targets we care about.
pub fn syscall_name(nr: i64) -> &'static str {
    #[cfg(target_arch = "aarch64")]
    let name = match nr {
        22 => "epoll_pwait",
        29 => "ioctl",
        56 => "openat",
        57 => "close",
        63 => "read",
        64 => "write",
        72 => "pselect6",
        73 => "ppoll",
        95 => "waitid",
        98 => "futex",
        101 => "nanosleep",
        115 => "clock_nanosleep",
        124 => "sched_yield",
        128 => "restart_syscall",
        133 => "rt_sigsuspend",
        137 => "rt_sigtimedwait",
        202 => "accept",
        203 => "connect",
        206 => "sendto",
        207 => "recvfrom",
        212 => "recvmsg",
        242 => "accept4",
        260 => "wait4",
        441 => "epoll_pwait2",
        449 => "futex_waitv",
        _ => "",
    };
    #[cfg(not(target_arch = "aarch64"))]
    let name = match nr {
        0 => "read",
        1 => "write",
        3 => "close",
        7 => "poll",
        16 => "ioctl",
        23 => "select",
        24 => "sched_yield",
        34 => "pause",
        35 => "nanosleep",
        42 => "connect",
        43 => "accept",
        44 => "sendto",
        45 => "recvfrom",
        47 => "recvmsg",
        61 => "wait4",
        128 => "rt_sigtimedwait",
        130 => "rt_sigsuspend",
        202 => "futex",
        219 => "restart_syscall",
        230 => "clock_nanosleep",
        232 => "epoll_wait",
        247 => "waitid",
        257 => "openat",
        270 => "pselect6",
        271 => "ppoll",
        281 => "epoll_pwait",
        288 => "accept4",
        441 => "epoll_pwait2",
        449 => "futex_waitv",
        _ => "",
    };
    name
}

/// The id a task has in its own (innermost) pid namespace: the last column of its `NSpid:`,
/// or `id` (the id in our view) when the kernel shows no chain.
pub fn own_ns_id(id: i32, nspid: &[i32]) -> i32 {
    nspid.last().copied().unwrap_or(id)
}

/// The id, in the pid namespace of a process whose chain is `child_chain`, of a process whose
/// chain is `chain` (both read through the same /proc): its last column when both live in the
/// same namespace (chains of equal length), None when it lives in an outer one and so has no id
/// there (`getppid()` is 0 for a container's pid 1). A child never lives in a namespace above
/// its parent's, so equal length means the same namespace for a parent and its child.
pub fn id_in_ns_of(chain: &[i32], child_chain: &[i32]) -> Option<i32> {
    if chain.len() == child_chain.len() {
        chain.last().copied()
    } else {
        None
    }
}

/// One thread as read in one sample.
#[derive(Debug, Clone, Default)]
pub struct TaskSample {
    pub tid: i32,
    pub stat: TaskStat,
    pub status: TaskStatus,
    pub syscall: Option<Syscall>,
}

impl TaskSample {
    /// The thread's id in its process's own pid namespace (what the process itself and its
    /// interpreter call it).
    pub fn ns_tid(&self) -> i32 {
        own_ns_id(self.tid, &self.status.nspid)
    }

    /// The in-namespace id when the thread lives in a pid namespace below the one we read
    /// through (a container seen from the host); None when both views agree.
    pub fn nested_ns_tid(&self) -> Option<i32> {
        (self.status.nspid.len() > 1).then(|| self.ns_tid())
    }
}

/// `(tid, id in the process's own pid namespace)` of every thread of `pid` now, from each
/// task's status only (a cheaper re-read than [`sample_tasks`], for a second look at ids).
pub fn ns_tids(pid: i32) -> ReadResult<Vec<(i32, i32)>> {
    let mut out = Vec::new();
    for tid in numeric_entries(format!("/proc/{pid}/task"))? {
        match read_text(format!("/proc/{pid}/task/{tid}/status")) {
            Ok(t) => out.push((tid, own_ns_id(tid, &parse_status(&t).nspid))),
            Err(ReadError::Gone) => continue,
            Err(e) => return Err(e),
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads every thread of `pid`. Threads that exit mid-read are skipped; the process itself
/// having gone is `Gone`. The main thread (tid == pid) comes first when present.
pub fn sample_tasks(pid: i32) -> ReadResult<Vec<TaskSample>> {
    let mut tids = numeric_entries(format!("/proc/{pid}/task"))?;
    tids.sort_unstable_by_key(|&t| (t != pid, t));
    let mut out = Vec::with_capacity(tids.len());
    for tid in tids {
        match sample_task(pid, tid) {
            Ok(s) => out.push(s),
            Err(ReadError::Gone) if tid != pid => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn sample_task(pid: i32, tid: i32) -> ReadResult<TaskSample> {
    let base = format!("/proc/{pid}/task/{tid}");
    let stat_text = read_text(format!("{base}/stat"))?;
    let stat = parse_stat(&stat_text).ok_or(ReadError::Gone)?;
    let status = parse_status(&read_text(format!("{base}/status"))?);
    // syscall needs ptrace-read access; unreadable is not fatal, just unknown.
    let syscall = match read_text(format!("{base}/syscall")) {
        Ok(t) => parse_syscall(&t),
        Err(ReadError::Gone) => return Err(ReadError::Gone),
        Err(_) => None,
    };
    Ok(TaskSample {
        tid,
        stat,
        status,
        syscall,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_exit_of_a_zombie() {
        let mut f: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        f[0] = "Z".into();
        f[14 - 3] = "7".into();
        f[15 - 3] = "5".into();
        f[52 - 3] = "256".into();
        let line = format!("42 (python3 (x)) {}", f.join(" "));
        let c = parse_cpu_exit(&line).unwrap();
        assert_eq!((c.state, c.cpu_ticks, c.starttime), ('Z', 12, 22));
        assert_eq!(c.pgrp, 5);
        assert_eq!(c.exit_code, Some(256));
        let short = "42 (a) S 1 2 3 4 5 6 7 8 9 10 11 3 4 14 15 16 17 18 19 20";
        assert_eq!(parse_cpu_exit(short).unwrap().exit_code, None);
        // Exit status 0 and 1; SIGABRT; SIGSEGV with its core-dump bit.
        assert_eq!(split_wait_status(0), (Some(0), None));
        assert_eq!(split_wait_status(256), (Some(1), None));
        assert_eq!(split_wait_status(6), (None, Some(6)));
        assert_eq!(split_wait_status(0x80 | 11), (None, Some(11)));
    }

    #[test]
    fn stat_with_odd_comm() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 3 0 987654 123456 \
                    789 18446744073709551615 1 1 0 0 0 0 0 16781312 0 0 0 17 1 0 0 0 0 0";
        let st = parse_stat(line).unwrap();
        assert_eq!(st.comm, "a) b (c)");
        assert_eq!(st.state, "S");
        assert_eq!(st.ppid, 1);
        assert_eq!(st.starttime, 987654);
        assert_eq!(st.start_code, 1);
        assert_eq!(st.start_brk, 0, "field 47 absent on this line");
    }

    #[test]
    fn stat_layout_fields() {
        let st = parse_stat(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        assert!(
            st.start_code > 0 && st.start_brk > 0 && st.arg_start > 0,
            "{st:?}"
        );
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tpython3\nTgid:\t77\nPid:\t78\nUid:\t1000\t1000\t1000\t1000\n\
                    NSpid:\t78\t12\nvoluntary_ctxt_switches:\t42\nnonvoluntary_ctxt_switches:\t3\n";
        let st = parse_status(text);
        assert_eq!(st.tgid, 77);
        assert_eq!(st.uid, 1000);
        assert_eq!(st.nspid, vec![78, 12]);
        assert_eq!(st.voluntary_ctxt_switches, 42);
    }

    #[test]
    fn ids_in_nested_namespaces() {
        // A thread of a container's pid 1 seen from the host: host tid 5012, 7 inside.
        let st = parse_status("Tgid:\t5000\nPid:\t5012\nNSpid:\t5012\t7\n");
        let s = TaskSample {
            tid: 5012,
            status: st,
            ..TaskSample::default()
        };
        assert_eq!((s.ns_tid(), s.nested_ns_tid()), (7, Some(7)));
        // Three levels (a container in a container): the last column is the process's own.
        assert_eq!(own_ns_id(9000, &[9000, 40, 3]), 3);
        // Inside the container, or a kernel without NSpid: one view.
        let s = TaskSample {
            tid: 7,
            status: parse_status("NSpid:\t7\n"),
            ..TaskSample::default()
        };
        assert_eq!((s.ns_tid(), s.nested_ns_tid()), (7, None));
        assert_eq!(own_ns_id(7, &[]), 7);
        // A worker's parent: the master, in the same namespace; the container's pid 1 has its
        // parent (the runtime) outside, so no id there.
        assert_eq!(id_in_ns_of(&[5000, 1], &[5001, 2]), Some(1));
        assert_eq!(id_in_ns_of(&[4990], &[5000, 1]), None);
        assert_eq!(id_in_ns_of(&[4990], &[5000]), Some(4990));
    }

    #[test]
    fn own_threads_ns_ids() {
        let pid = std::process::id() as i32;
        let ids = ns_tids(pid).unwrap();
        // The test runs in one pid namespace as seen through its own /proc.
        assert!(ids.contains(&(pid, pid)), "{ids:?}");
    }

    #[test]
    fn syscall_futex_no_timeout() {
        let sc = parse_syscall(
            "202 0x7f1c2c000b60 0x80 0x0 0x0 0x0 0x0 0x7f1c2bffe6e0 0x7f1c3b8a4d36\n",
        )
        .unwrap();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(sc.name, "futex");
        assert_eq!(sc.nr, 202);
        assert_eq!(sc.args, vec![0x7f1c2c000b60, 0x80, 0, 0, 0, 0]);
    }

    #[test]
    fn syscall_running_and_blocked_outside() {
        assert_eq!(parse_syscall("running\n").unwrap().nr, -1);
        assert_eq!(parse_syscall("running\n").unwrap().name, "running");
        let sc = parse_syscall("-1 0x7ffd1234 0x7f00aa\n").unwrap();
        assert_eq!(sc.nr, -1);
        assert!(sc.args.is_empty());
        assert!(parse_syscall("").is_none());
    }

    #[test]
    fn samples_own_threads() {
        let pid = std::process::id() as i32;
        let tasks = sample_tasks(pid).unwrap();
        assert_eq!(tasks[0].tid, pid);
        assert_eq!(tasks[0].status.tgid, pid);
    }
}
