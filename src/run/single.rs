//! Commands that serve from one process and never fork a worker, known from their arguments:
//! `run` says so at once, where waiting would only end in "never forked" after
//! `--startup-timeout`.

/// Why `command` never forks a worker, and how to run it so that it does (None: it may). `env`
/// reads `run`'s environment, which the command inherits (uvicorn takes its default worker
/// count from WEB_CONCURRENCY).
pub fn never_forks(
    command: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(String, &'static str)> {
    let (tool, rest) = program(command)?;
    match tool {
        "celery" => {
            if !rest.iter().any(|a| a == "worker") {
                return None;
            }
            let pool = value(rest, "-P", "--pool")?;
            let within = match pool.as_str() {
                "solo" => "",
                "threads" | "gevent" | "eventlet" => "'s threads or greenlets",
                _ => return None,
            };
            Some((
                format!(
                    "celery worker --pool={pool} runs its tasks in its main process{within}: \
                     no pool process is forked"
                ),
                "a server that never forks has none of the failures otel-forkcheck finds; to \
                 check the prefork pool, run the worker with --pool=prefork",
            ))
        }
        "uvicorn" => {
            if rest.iter().any(|a| a == "--reload") {
                return None;
            }
            let workers = value(rest, "--workers", "--workers")
                .or_else(|| env("WEB_CONCURRENCY"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(1);
            (workers <= 1).then(|| {
                (
                    "uvicorn without --workers above 1 (or WEB_CONCURRENCY) serves from its own \
                     process: no worker is started"
                        .to_string(),
                    "a server that never forks has none of the failures otel-forkcheck finds; \
                     to check workers, give uvicorn --workers 2 (or run it under gunicorn -k \
                     uvicorn.workers.UvicornWorker)",
                )
            })
        }
        "hypercorn" => {
            let workers = value(rest, "-w", "--workers")?;
            (workers.trim() == "0").then(|| {
                (
                    "hypercorn --workers 0 serves from its own process: no worker is started"
                        .to_string(),
                    "a server that never forks has none of the failures otel-forkcheck finds; \
                     to check workers, give hypercorn --workers 1 or more",
                )
            })
        }
        _ => None,
    }
}

/// The Python server the command runs (`celery`, `/venv/bin/uvicorn`, `python -m hypercorn`,
/// also behind `opentelemetry-instrument`), and its arguments.
fn program(command: &[String]) -> Option<(&'static str, &[String])> {
    const KNOWN: [&str; 3] = ["celery", "uvicorn", "hypercorn"];
    // The first server named is the one that runs (`gunicorn --name uvicorn` is gunicorn).
    const OTHERS: [&str; 4] = ["gunicorn", "uwsgi", "rq", "granian"];
    for (i, a) in command.iter().enumerate() {
        let name = match a.as_str() {
            "-m" => command.get(i + 1).map(String::as_str),
            _ => a.rsplit('/').next(),
        };
        if OTHERS.iter().any(|o| Some(*o) == name) {
            return None;
        }
        if let Some(k) = KNOWN.iter().find(|k| Some(**k) == name) {
            let skip = if a == "-m" { i + 2 } else { i + 1 };
            return Some((k, command.get(skip..).unwrap_or_default()));
        }
    }
    None
}

/// The value of `short`/`long` (`-P solo`, `-Psolo`, `--pool solo`, `--pool=solo`), the last
/// one given.
fn value(args: &[String], short: &str, long: &str) -> Option<String> {
    let mut found = None;
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        if a == short || a == long {
            found = it.peek().map(|v| v.to_string());
        } else if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            found = Some(v.to_string());
        } else if let Some(v) = a
            .strip_prefix(short)
            .filter(|v| short.len() == 2 && !v.is_empty())
        {
            found = Some(v.trim_start_matches('=').to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(a: &str) -> Vec<String> {
        a.split_whitespace().map(str::to_string).collect()
    }

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn celery_pools_that_fork_and_pools_that_do_not() {
        for cmd in [
            "celery -A tasks worker --pool=solo",
            "/v/bin/python -m celery -A tasks worker -P solo -c 2",
            "celery -A tasks worker -Pthreads",
            "opentelemetry-instrument /v/bin/celery -A t worker --pool gevent",
        ] {
            let (why, _) = never_forks(&s(cmd), &none).unwrap_or_else(|| panic!("{cmd}"));
            assert!(why.starts_with("celery worker --pool="), "{why}");
        }
        for cmd in [
            "celery -A tasks worker",
            "celery -A tasks worker --pool=prefork",
            "celery -A tasks worker -P solo --pool prefork",
            "celery -A tasks beat",
            "gunicorn app:app",
            "gunicorn --name uvicorn app:app",
            "/v/bin/python -m gunicorn -k uvicorn.workers.UvicornWorker --name uvicorn a:b",
        ] {
            assert_eq!(never_forks(&s(cmd), &none), None, "{cmd}");
        }
    }

    #[test]
    fn uvicorn_and_hypercorn_in_one_process() {
        assert!(never_forks(&s("uvicorn app:app --port 0"), &none).is_some());
        assert!(never_forks(&s("python -m uvicorn app:app --workers 1"), &none).is_some());
        assert_eq!(never_forks(&s("uvicorn app:app --workers 2"), &none), None);
        assert_eq!(never_forks(&s("uvicorn app:app --workers=4"), &none), None);
        assert_eq!(never_forks(&s("uvicorn app:app --reload"), &none), None);
        let four = |k: &str| (k == "WEB_CONCURRENCY").then(|| "4".to_string());
        assert_eq!(never_forks(&s("uvicorn app:app"), &four), None);
        assert!(never_forks(&s("hypercorn -w 0 app:app"), &none).is_some());
        assert_eq!(never_forks(&s("hypercorn app:app"), &none), None);
        assert_eq!(
            never_forks(&s("hypercorn --workers=2 app:app"), &none),
            None
        );
    }
}
