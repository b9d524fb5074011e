//! Environment and configuration facts: how the SDK gets set up relative to fork.
//!
//! - `opentelemetry-instrument` puts its `auto_instrumentation` dir on `PYTHONPATH`, which
//!   initialises the SDK in the master at interpreter start (docs/failure-modes.md#auto-instrumentation-in-the-master).
//! - gunicorn `--preload` / `preload_app = True` imports the app (and an import-time SDK set-up)
//!   in the master; it can come from the command line, `GUNICORN_CMD_ARGS`, or a config file
//!   (`-c FILE`, or `./gunicorn.conf.py` which gunicorn reads by default).
//! - uWSGI runs Python's fork hooks only with `lazy-apps`, `py-call-osafterfork` or
//!   `py-call-uwsgi-fork-hooks`; these can be on the command line, in an .ini it names, or in
//!   `UWSGI_*` variables.
//! - `OTEL_EXPORTER_OTLP_*ENDPOINT` says where the collector is, so sockets can be matched.
//! - gunicorn's worker class, and the server a launcher script starts ([`server`]).
//!
//! Header variables (`OTEL_EXPORTER_OTLP_*HEADERS`) often carry API keys; their values are
//! redacted because snapshots get attached to bug reports.

use std::collections::HashMap;

use crate::proc::rootfs;
use crate::snapshot::{Endpoint, EnvFacts};

mod recycling;
mod server;
mod timeout;
pub use recycling::{
    celery_recycling, gunicorn_recycling, hypercorn_recycling, uvicorn_recycling, uwsgi_recycling,
};
pub use server::{gunicorn_worker_class, python_script, script_framework, worker_kind};
pub use timeout::{gunicorn_graceful_timeout, uwsgi_graceful_timeout};

fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Directory opentelemetry-instrument adds to PYTHONPATH.
const AUTO_INSTRUMENTATION_DIR: &str = "opentelemetry/instrumentation/auto_instrumentation";

/// The environment part of [`EnvFacts`] (preload and uWSGI options are filled by the caller,
/// which knows the framework and can read config files).
pub fn env_facts(env: &[(String, String)]) -> EnvFacts {
    let otel = env
        .iter()
        .filter(|(k, _)| k.starts_with("OTEL_"))
        .map(|(k, v)| {
            let v = if k.ends_with("HEADERS") && !v.is_empty() {
                "<redacted>".to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    let pythonpath = get(env, "PYTHONPATH").map(str::to_string);
    let auto_instrumentation = pythonpath.as_deref().is_some_and(|p| {
        p.split(':')
            .any(|e| e.trim_end_matches('/').ends_with(AUTO_INSTRUMENTATION_DIR))
    });
    EnvFacts {
        otel,
        pythonpath,
        auto_instrumentation,
        grpc_fork_support: get(env, "GRPC_ENABLE_FORK_SUPPORT").map(str::to_string),
        preload: None,
        uwsgi_fork_options: Vec::new(),
        readable: true,
        from_memory: false,
    }
}

/// True for a `--preload` flag in an argument list.
fn has_preload_flag<S: AsRef<str>>(args: &[S]) -> bool {
    args.iter().any(|a| a.as_ref() == "--preload")
}

/// gunicorn's config file from the command line: `-c FILE`, `-cFILE`, `--config FILE`,
/// `--config=FILE`. `python:module` configs are not files and are skipped.
pub fn gunicorn_config_arg(args: &[String]) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = if a == "-c" || a == "--config" {
            it.next().cloned()
        } else if let Some(v) = a.strip_prefix("--config=") {
            Some(v.to_string())
        } else {
            a.strip_prefix("-c")
                .filter(|v| !v.is_empty() && !a.starts_with("--"))
                .map(str::to_string)
        };
        if let Some(v) = v {
            return if v.starts_with("python:") {
                None
            } else {
                Some(v)
            };
        }
    }
    None
}

/// True when a gunicorn config file sets `preload_app = True` on a line of its own (a
/// regex-like read, not Python evaluation: `preload_app = os.environ[...]` is not understood).
pub fn config_sets_preload(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("preload_app") else {
            return false;
        };
        let Some(rest) = rest.trim_start().strip_prefix('=') else {
            return false;
        };
        let value = rest.trim_start();
        value == "True" || value.starts_with("True ") || value.starts_with("True#")
    })
}

/// gunicorn preload and where it was read, from what is already in hand. `read_config` reads a
/// config path (as the target sees it, relative to its cwd) and returns its text and the path
/// shown to people.
pub fn gunicorn_preload(
    env_at: &str,
    args: &[String],
    env: &[(String, String)],
    read_config: &mut dyn FnMut(&str) -> Option<(String, String)>,
) -> Option<String> {
    if has_preload_flag(args) {
        return Some("--preload on the command line".into());
    }
    if let Some(cmd_args) = get(env, "GUNICORN_CMD_ARGS") {
        let words: Vec<&str> = cmd_args.split_whitespace().collect();
        if has_preload_flag(&words) {
            return Some(format!("--preload in GUNICORN_CMD_ARGS ({env_at})"));
        }
    }
    // gunicorn reads ./gunicorn.conf.py when no -c is given.
    let path = gunicorn_config_arg(args).unwrap_or_else(|| "gunicorn.conf.py".to_string());
    let (text, shown) = read_config(&path)?;
    config_sets_preload(&text).then(|| format!("preload_app = True in {shown}"))
}

/// uWSGI options that make Python's fork hooks run.
pub const UWSGI_FORK_OPTIONS: [&str; 4] = [
    "lazy-apps",
    "lazy",
    "py-call-osafterfork",
    "py-call-uwsgi-fork-hooks",
];

fn truthy(v: &str) -> bool {
    !matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "0" | "false" | "no" | "off" | "n"
    )
}

/// uWSGI fork options from the command line (`--lazy-apps`, `--lazy-apps=true`,
/// `--py-call-osafterfork 1`), from `UWSGI_LAZY_APPS`-style variables, and from the ini file
/// named by `--ini FILE` or a bare `*.ini` argument (`read_ini` reads it as the target sees it,
/// relative paths against its cwd; a relative path it cannot read is tried under `PWD` too).
pub fn uwsgi_fork_options(
    args: &[String],
    env: &[(String, String)],
    read_ini: &mut dyn FnMut(&str) -> Option<String>,
) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        if !found.iter().any(|f| f == name) {
            found.push(name.to_string());
        }
    };
    let mut ini_files = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--ini" {
            if let Some(f) = args.get(i + 1) {
                ini_files.push(f.clone());
            }
            i += 2;
            continue;
        }
        if let Some(f) = a.strip_prefix("--ini=") {
            ini_files.push(f.to_string());
        } else if i > 0 && !a.starts_with('-') && a.ends_with(".ini") {
            ini_files.push(a.clone());
        } else if let Some(opt) = a.strip_prefix("--") {
            let (name, inline) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (opt, None),
            };
            if UWSGI_FORK_OPTIONS.contains(&name) {
                // A following argument that is not an option is this option's value.
                let next = args.get(i + 1).filter(|n| !n.starts_with('-'));
                let value = inline.or(next.map(|s| s.as_str()));
                if inline.is_none() && next.is_some_and(|n| is_bool_word(n)) {
                    i += 1;
                }
                if value.is_none_or(|v| !is_bool_word(v) || truthy(v)) {
                    add(name);
                }
            }
        }
        i += 1;
    }
    for name in UWSGI_FORK_OPTIONS {
        let var = format!("UWSGI_{}", name.replace('-', "_").to_ascii_uppercase());
        if let Some(v) = get(env, &var) {
            if truthy(v) {
                add(name);
            }
        }
    }
    // uWSGI applies `chdir` (command line or ini) after reading its config, so a relative ini path
    // may no longer resolve against the master's cwd: then try the directory it was started
    // from, as the launching shell recorded it in PWD.
    let pwd = get(env, "PWD").filter(|p| p.starts_with('/'));
    for file in ini_files {
        let text = read_ini(&file).or_else(|| {
            let base = pwd.filter(|_| !file.starts_with('/'))?;
            read_ini(&format!("{}/{file}", base.trim_end_matches('/')))
        });
        if let Some(text) = text {
            for name in ini_fork_options(&text) {
                add(&name);
            }
        }
    }
    found
}

fn is_bool_word(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "0" | "1" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n"
    )
}

/// Fork options set in the `[uwsgi]` section of an ini file (`lazy-apps = true`, or the bare
/// key). Underscores are accepted as uWSGI does.
pub fn ini_fork_options(text: &str) -> Vec<String> {
    let mut section_ok = true;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section_ok = line == "[uwsgi]";
            continue;
        }
        if !section_ok {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (line, "true"),
        };
        let key = key.replace('_', "-");
        if let Some(name) = UWSGI_FORK_OPTIONS.iter().find(|n| **n == key) {
            if truthy(value) && !out.iter().any(|o| o == name) {
                out.push(name.to_string());
            }
        }
    }
    out
}

const ENDPOINT_VARS: [&str; 4] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
];

/// Collector endpoints the tree is configured for, from each process's environment
/// (`(where it was read, env)` pairs, root first). With none set anywhere, the SDK defaults
/// `localhost:4318` (http) and `localhost:4317` (grpc). `localhost` becomes `127.0.0.1` so
/// that it matches socket addresses.
pub fn collector_endpoints(envs: &[(String, &[(String, String)])]) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    for (place, env) in envs {
        for var in ENDPOINT_VARS {
            let Some(value) = get(env, var).filter(|v| !v.trim().is_empty()) else {
                continue;
            };
            let signal_protocol = var
                .strip_suffix("_ENDPOINT")
                .map(|p| format!("{p}_PROTOCOL"))
                .and_then(|k| get(env, &k));
            let protocol = signal_protocol
                .or_else(|| get(env, "OTEL_EXPORTER_OTLP_PROTOCOL"))
                .unwrap_or("");
            if let Some((host, port)) = parse_endpoint(value, protocol) {
                if !out.iter().any(|e| e.host == host && e.port == port) {
                    out.push(Endpoint {
                        host,
                        port,
                        source: format!("{var} in {place}"),
                    });
                }
            }
        }
    }
    if out.is_empty() {
        for port in [4318, 4317] {
            out.push(Endpoint {
                host: "127.0.0.1".into(),
                port,
                source: "default".into(),
            });
        }
    }
    out
}

pub use crate::otlp::endpoint::parse_endpoint;

/// Small per-observation cache so that a config file shared by 64 workers is read once.
#[derive(Default)]
pub struct FileCache {
    files: HashMap<String, Option<String>>,
}

impl FileCache {
    /// Reads `path` as the process `pid` sees it: relative to its working directory, below its
    /// root and in its mount namespace (a container's `gunicorn.conf.py` is not the host's),
    /// never from the reader's own filesystem ([`crate::proc::rootfs`]). Returns the text and
    /// the absolute path in the target's view (what people see in their container).
    pub fn read_for(&mut self, pid: i32, path: &str) -> Option<(String, String)> {
        let abs = rootfs::target_path(pid, path).ok()?;
        // Workers share root and cwd with the master, so one read serves the whole tree.
        let key = format!("{}|{abs}", rootfs::root_id(pid));
        let text = self
            .files
            .entry(key)
            .or_insert_with(|| rootfs::read_text(pid, &abs).ok())
            .clone()?;
        Some((text, abs))
    }
}

#[cfg(test)]
mod tests;
