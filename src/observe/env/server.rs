//! Which server, and which of its worker kinds, a tree runs, where the command line does not
//! say it outright:
//! - gunicorn's worker class (`-k gevent`, `--worker-class uvicorn_worker.UvicornWorker`,
//!   `worker_class = "gthread"` in the config file, `GUNICORN_CMD_ARGS`), which decides
//!   whether the SDK's exporters are OS threads and which set-up hook fits;
//! - a launcher script (`python serve.py`) that starts uvicorn, Hypercorn, Granian or a custom
//!   gunicorn application itself: its command line names only the script, so the script's
//!   source is read (as gunicorn's config file is: a plain-text read, no evaluation).

use super::{get, gunicorn_config_arg};
use crate::snapshot::{Framework, WorkerClass, WorkerKind};

/// What kind of worker a gunicorn `worker_class` value names.
pub fn worker_kind(class: &str) -> WorkerKind {
    let c = class.trim();
    let short = c.rsplit(['#', '.']).next().unwrap_or(c);
    // `geventlet` (eventlet's module in gunicorn) contains "gevent": test eventlet first.
    if c.contains("eventlet") || short == "EventletWorker" {
        WorkerKind::Eventlet
    } else if c.contains("gevent") || short.starts_with("Gevent") {
        WorkerKind::Gevent
    } else if c.contains("gthread") || short == "ThreadWorker" {
        WorkerKind::Gthread
    } else if c.contains("tornado") || short == "TornadoWorker" {
        WorkerKind::Tornado
    } else if short.starts_with("Uvicorn") {
        WorkerKind::Uvicorn
    } else if c == "sync" || c.ends_with("#sync") || short == "SyncWorker" {
        WorkerKind::Sync
    } else {
        WorkerKind::Other
    }
}

/// The value of an option among `args`, and the spelling used: `-k X`, `-kX`,
/// `--worker-class X`, `--worker-class=X` (for `short` = "-k", `long` = "--worker-class").
/// The last one wins, as in gunicorn's argument parser.
pub(super) fn option_value<'a, S: AsRef<str>>(
    args: &[S],
    short: &'a str,
    long: &'a str,
) -> Option<(String, &'a str)> {
    let mut found = None;
    let mut it = args.iter().map(|a| a.as_ref());
    let long_eq = format!("{long}=");
    while let Some(a) = it.next() {
        if a == short || a == long {
            if let Some(v) = it.next() {
                found = Some((v.to_string(), if a == short { short } else { long }));
            }
        } else if let Some(v) = a.strip_prefix(&long_eq) {
            found = Some((v.to_string(), long));
        } else if let Some(v) = a.strip_prefix(short).filter(|v| !v.is_empty()) {
            if !a.starts_with("--") {
                found = Some((v.to_string(), short));
            }
        }
    }
    found
}

/// `NAME = "value"` (or `'value'`, or a bare number) on a line of its own in a gunicorn config
/// file; a value that is not a literal (`os.environ[...]`) is not understood.
pub(super) fn config_value(text: &str, name: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix(name) else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = rest.split('#').next().unwrap_or("").trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')));
        match unquoted {
            Some(v) => found = Some(v.to_string()),
            None if value.chars().all(|c| c.is_ascii_digit()) && !value.is_empty() => {
                found = Some(value.to_string())
            }
            None => {}
        }
    }
    found
}

/// The text and shown path of gunicorn's config file: `-c FILE`, else `./gunicorn.conf.py`,
/// which gunicorn reads when no `-c` is given.
pub(super) fn gunicorn_config(
    args: &[String],
    read_config: &mut dyn FnMut(&str) -> Option<(String, String)>,
) -> Option<(String, String)> {
    read_config(&gunicorn_config_arg(args).unwrap_or_else(|| "gunicorn.conf.py".to_string()))
}

/// A gunicorn setting in gunicorn's order, and where it was read: the command line (`short` or
/// `long`), then `GUNICORN_CMD_ARGS`, then `key` in the config file (`config`: its text and the
/// path shown).
pub(super) fn gunicorn_setting(
    env_at: &str,
    args: &[String],
    env: &[(String, String)],
    config: Option<&(String, String)>,
    short: &str,
    long: &str,
    key: &str,
) -> Option<(String, String)> {
    if let Some((v, flag)) = option_value(args, short, long) {
        return Some((v, format!("{flag} on the command line")));
    }
    let env_args: Vec<&str> = get(env, "GUNICORN_CMD_ARGS")
        .map(|a| a.split_whitespace().collect())
        .unwrap_or_default();
    if let Some((v, flag)) = option_value(&env_args, short, long) {
        return Some((v, format!("{flag} in GUNICORN_CMD_ARGS ({env_at})")));
    }
    let (text, shown) = config?;
    config_value(text, key).map(|v| (v, format!("{key} in {shown}")))
}

/// gunicorn's worker class from what is in hand: the command line, then `GUNICORN_CMD_ARGS`,
/// then the config file (`-c FILE`, else `./gunicorn.conf.py`), else gunicorn's default,
/// `sync`. gunicorn runs a `sync` class with `threads` above 1 as `gthread`. `read_config`
/// reads a config path as the target sees it and returns its text and the path shown.
pub fn gunicorn_worker_class(
    env_at: &str,
    args: &[String],
    env: &[(String, String)],
    read_config: &mut dyn FnMut(&str) -> Option<(String, String)>,
) -> WorkerClass {
    let config = gunicorn_config(args, read_config);
    let class =
        |short, long, key| gunicorn_setting(env_at, args, env, config.as_ref(), short, long, key);
    let (name, source) =
        class("-k", "--worker-class", "worker_class").unwrap_or(("sync".into(), "default".into()));
    let mut kind = worker_kind(&name);
    let mut source = source;
    if kind == WorkerKind::Sync {
        if let Some((threads, from)) = class("--threads", "--threads", "threads") {
            if threads.trim().parse::<u32>().is_ok_and(|n| n > 1) {
                kind = WorkerKind::Gthread;
                source = format!("{source}; threads = {threads} ({from}) makes it gthread");
            }
        }
    }
    WorkerClass { name, kind, source }
}

/// The script a Python command line runs (`python -u serve.py --port 1` -> `serve.py`); None
/// for `-c`, `-m`, an interactive interpreter, or a command line that is not Python's.
pub fn python_script(args: &[String]) -> Option<&str> {
    let first = args.first()?;
    if !first.rsplit('/').next()?.starts_with("python") {
        return None;
    }
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-c" | "-m" | "-" => return None,
            // Options that take the next argument.
            "-W" | "-X" | "--check-hash-based-pycs" => {
                it.next();
            }
            o if o.starts_with('-') => {}
            script => return Some(script),
        }
    }
    None
}

/// The server a launcher script starts, from its source, and the line that says so: gunicorn
/// (a custom `BaseApplication`), uvicorn, Hypercorn or Granian imported. Comment lines are
/// skipped; when several are imported the first of that order wins (a gunicorn application
/// importing `uvicorn_worker` is gunicorn's).
pub fn script_framework(text: &str) -> Option<(Framework, String)> {
    const SERVERS: [(&str, Framework); 4] = [
        ("gunicorn", Framework::Gunicorn),
        ("uvicorn", Framework::Uvicorn),
        ("hypercorn", Framework::Hypercorn),
        ("granian", Framework::Granian),
    ];
    let imports = |line: &str, module: &str| {
        let names_module = |rest: &str| {
            rest.split([',', ' ', '.'])
                .filter(|w| !w.is_empty())
                .any(|w| w == module)
        };
        if let Some(rest) = line.strip_prefix("import ") {
            return names_module(rest.split(" as ").next().unwrap_or(rest));
        }
        line.strip_prefix("from ")
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|m| m.split('.').next() == Some(module))
    };
    for (module, fw) in SERVERS {
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if imports(line, module) {
                return Some((fw, format!("line {}: {line}", n + 1)));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::env::tests::s;

    #[test]
    fn worker_kinds() {
        for (class, kind) in [
            ("sync", WorkerKind::Sync),
            ("gunicorn.workers.sync.SyncWorker", WorkerKind::Sync),
            ("gevent", WorkerKind::Gevent),
            ("egg:gunicorn#gevent", WorkerKind::Gevent),
            ("gunicorn.workers.ggevent.GeventWorker", WorkerKind::Gevent),
            ("eventlet", WorkerKind::Eventlet),
            (
                "gunicorn.workers.geventlet.EventletWorker",
                WorkerKind::Eventlet,
            ),
            ("gthread", WorkerKind::Gthread),
            ("gunicorn.workers.gthread.ThreadWorker", WorkerKind::Gthread),
            ("tornado", WorkerKind::Tornado),
            ("uvicorn_worker.UvicornWorker", WorkerKind::Uvicorn),
            ("uvicorn.workers.UvicornWorker", WorkerKind::Uvicorn),
            ("uvicorn_worker.UvicornH11Worker", WorkerKind::Uvicorn),
            ("myapp.workers.Custom", WorkerKind::Other),
        ] {
            assert_eq!(worker_kind(class), kind, "{class}");
        }
    }

    #[test]
    fn worker_class_sources_in_gunicorn_order() {
        let none = |_: &str| -> Option<(String, String)> { None };
        let env = |v: &str| vec![("GUNICORN_CMD_ARGS".to_string(), v.to_string())];
        let wc =
            gunicorn_worker_class("/proc/1/environ", &s(&["gunicorn", "app:app"]), &[], &mut {
                none
            });
        assert_eq!((wc.name.as_str(), wc.kind), ("sync", WorkerKind::Sync));
        assert_eq!(wc.source, "default");
        let wc = gunicorn_worker_class(
            "/proc/1/environ",
            &s(&["gunicorn", "-k", "gevent", "app:app"]),
            &env("--worker-class=gthread"),
            &mut { none },
        );
        assert_eq!(wc.kind, WorkerKind::Gevent);
        assert_eq!(wc.source, "-k on the command line");
        let wc = gunicorn_worker_class(
            "/proc/1/environ",
            &s(&["gunicorn", "-kuvicorn_worker.UvicornWorker", "app:app"]),
            &[],
            &mut { none },
        );
        assert_eq!(wc.name, "uvicorn_worker.UvicornWorker");
        assert_eq!(wc.kind, WorkerKind::Uvicorn);
        let wc = gunicorn_worker_class(
            "/proc/7/environ",
            &s(&["gunicorn", "app:app"]),
            &env("--worker-class eventlet -w 2"),
            &mut { none },
        );
        assert_eq!(wc.kind, WorkerKind::Eventlet);
        assert!(wc.source.contains("GUNICORN_CMD_ARGS (/proc/7/environ)"));
        // The config file, `-c` or ./gunicorn.conf.py.
        let mut read = |path: &str| -> Option<(String, String)> {
            (path == "conf/g.py").then(|| {
                (
                    "bind = '0:80'\nworker_class = 'gevent'  # async\nthreads = 4\n".into(),
                    "/srv/conf/g.py".into(),
                )
            })
        };
        let wc = gunicorn_worker_class(
            "/proc/1/environ",
            &s(&["gunicorn", "-c", "conf/g.py"]),
            &[],
            &mut read,
        );
        assert_eq!(wc.kind, WorkerKind::Gevent);
        assert_eq!(wc.source, "worker_class in /srv/conf/g.py");
        // sync with threads > 1 runs as gthread.
        let mut read = |_: &str| -> Option<(String, String)> {
            Some(("threads = 4\n".into(), "/srv/gunicorn.conf.py".into()))
        };
        let wc = gunicorn_worker_class(
            "/proc/1/environ",
            &s(&["gunicorn", "app:app"]),
            &[],
            &mut read,
        );
        assert_eq!((wc.name.as_str(), wc.kind), ("sync", WorkerKind::Gthread));
        assert!(wc.source.contains("threads = 4"), "{}", wc.source);
        let wc = gunicorn_worker_class(
            "/proc/1/environ",
            &s(&["gunicorn", "--threads", "1", "app:app"]),
            &[],
            &mut { none },
        );
        assert_eq!(wc.kind, WorkerKind::Sync);
    }

    #[test]
    fn launcher_scripts() {
        assert_eq!(
            python_script(&s(&[
                "/v/bin/python",
                "-u",
                "-X",
                "dev",
                "serve.py",
                "--port",
                "1"
            ])),
            Some("serve.py")
        );
        assert_eq!(
            python_script(&s(&["python3", "-m", "uvicorn", "a:b"])),
            None
        );
        assert_eq!(python_script(&s(&["python3", "-c", "pass"])), None);
        assert_eq!(python_script(&s(&["python3"])), None);
        assert_eq!(python_script(&s(&["/bin/sh", "x.py"])), None);

        let uvicorn = "import os\n# import gunicorn\nimport uvicorn  # noqa: E402\n\nif __name__ == '__main__':\n    uvicorn.run('app:app', workers=2)\n";
        assert_eq!(
            script_framework(uvicorn),
            Some((Framework::Uvicorn, "line 3: import uvicorn".to_string()))
        );
        let hyper = "import asyncio\nfrom hypercorn.config import Config\n";
        assert_eq!(script_framework(hyper).unwrap().0, Framework::Hypercorn);
        let granian = "from granian.server import Server as Granian\n";
        assert_eq!(script_framework(granian).unwrap().0, Framework::Granian);
        let custom = "from uvicorn_worker import UvicornWorker\nfrom gunicorn.app.base import BaseApplication\n";
        assert_eq!(script_framework(custom).unwrap().0, Framework::Gunicorn);
        assert_eq!(script_framework("import uvicornish\nx = 'uvicorn'\n"), None);
        assert_eq!(
            script_framework("import os, uvicorn as u\n").unwrap().0,
            Framework::Uvicorn
        );
    }
}
