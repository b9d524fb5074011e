//! Servers that retitle their processes: with setproctitle installed (venv `titled`), gunicorn
//! calls itself `gunicorn: master [app]` and `gunicorn: worker [app]`, and setproctitle clears
//! the rest of the area that /proc/<pid>/cmdline and /proc/<pid>/environ read. Before, such a
//! tree was framework "unknown" (the title was followed by empty arguments), every process had
//! an empty environment (no OTEL_* settings, nothing from GUNICORN_CMD_ARGS) and no arguments
//! (no `-c` config file: its `preload_app` unseen, FC302 missed). The environment is read from
//! the process's memory (libc's `environ`), the arguments from `sys.argv`.
mod common;

use common::report::check_json;
use common::Gunicorn;
use serde_json::Value;

#[test]
fn a_retitled_gunicorn_is_recognised_and_its_environment_and_arguments_read_from_memory() {
    let g = Gunicorn::start(
        "titled",
        "preload",
        2,
        &[
            ("GUNICORN_CMD_ARGS", "--max-requests 1000"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "60000"),
        ],
    );
    // What the kernel shows: the title alone, and an environment of NULs only.
    let pids: Vec<i32> = [g.master_pid].into_iter().chain(g.worker_pids()).collect();
    for &pid in &pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(cmdline.starts_with(b"gunicorn: "), "{cmdline:?}");
        assert_eq!(
            cmdline.split(|&b| b == 0).filter(|a| !a.is_empty()).count(),
            1
        );
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(!environ.is_empty() && environ.iter().all(|&b| b == 0));
    }
    let o = check_json(g.master_pid, "1s");
    let r = &o.report;
    assert_eq!(r["root"]["framework"], "gunicorn", "{r:#}");
    // GUNICORN_CMD_ARGS, from the environment read in memory.
    assert_eq!(
        r["root"]["recycling"]["source"],
        format!(
            "--max-requests in GUNICORN_CMD_ARGS (pid {}'s environment, read from its memory)",
            g.master_pid
        ),
        "{r:#}"
    );
    // The config file named by `-c` (from sys.argv) preloads: FC302 with FC101.
    assert_eq!(o.code_set(), vec!["FC101", "FC302"], "{r:#}");
    let procs = r["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 3, "{r:#}");
    for p in procs {
        let args: Vec<&str> = p["cmdline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args[0].starts_with("gunicorn: "), "{args:?}");
        assert!(args.contains(&"-c"), "{args:?}");
        assert_eq!(p["env"]["readable"], true, "{p:#}");
        let otel: Vec<&Value> = p["env"]["otel"].as_array().unwrap().iter().collect();
        assert!(
            otel.contains(&&serde_json::json!([
                "OTEL_METRIC_EXPORT_INTERVAL",
                "60000"
            ])),
            "{p:#}"
        );
        assert!(
            p["env"]["preload"].as_str().is_some_and(
                |s| s.contains("preload_app = True in") && s.contains("preload.conf.py")
            ),
            "{p:#}"
        );
    }
    let workers = procs.iter().filter(|p| p["role"] == "worker").count();
    assert_eq!(workers, 2, "{r:#}");
}
