//! How long a server lets a worker take to exit after a graceful stop before it kills it
//! (FC210 compares each worker's exit time with it): gunicorn's `graceful_timeout` (default
//! 30 s), uWSGI's `worker-reload-mercy` (default 60 s).

use super::get;
use super::server::{gunicorn_config, gunicorn_setting, option_value};
use crate::snapshot::GracefulTimeout;

/// gunicorn's `--graceful-timeout` ([`gunicorn_setting`]), else 30 s.
pub fn gunicorn_graceful_timeout(
    env_at: &str,
    args: &[String],
    env: &[(String, String)],
    read_config: &mut dyn FnMut(&str) -> Option<(String, String)>,
) -> GracefulTimeout {
    const FLAG: &str = "--graceful-timeout";
    let config = gunicorn_config(args, read_config);
    let found = gunicorn_setting(
        env_at,
        args,
        env,
        config.as_ref(),
        FLAG,
        FLAG,
        "graceful_timeout",
    );
    match found
        .and_then(|(v, source)| Some((v.trim().parse::<f64>().ok().filter(|s| *s >= 0.0)?, source)))
    {
        Some((s, source)) => timeout(s, source),
        None => timeout(30.0, "gunicorn's default".into()),
    }
}

/// uWSGI's `worker-reload-mercy` ([`uwsgi_setting`]), else 60 s.
pub fn uwsgi_graceful_timeout(
    args: &[String],
    env: &[(String, String)],
    read_ini: &mut dyn FnMut(&str) -> Option<String>,
) -> GracefulTimeout {
    let seconds = |v: &str| v.trim().parse::<f64>().ok().filter(|s| *s >= 0.0);
    match uwsgi_setting(args, env, read_ini, "worker-reload-mercy") {
        Some((v, source)) => match seconds(&v) {
            Some(s) => timeout(s, source),
            None => timeout(60.0, "uWSGI's default".into()),
        },
        None => timeout(60.0, "uWSGI's default".into()),
    }
}

/// A uWSGI option `key` and where it was read: the command line (`--KEY N`), then the
/// environment (`UWSGI_KEY`), then the ini files the command line names (`read_ini`, a relative
/// one also from the process's `PWD`).
pub(super) fn uwsgi_setting(
    args: &[String],
    env: &[(String, String)],
    read_ini: &mut dyn FnMut(&str) -> Option<String>,
    key: &str,
) -> Option<(String, String)> {
    let flag = format!("--{key}");
    if let Some((v, _)) = option_value(args, &flag, &flag) {
        return Some((v, format!("{flag} on the command line")));
    }
    let var = format!("UWSGI_{}", key.replace('-', "_").to_uppercase());
    if let Some(v) = get(env, &var) {
        return Some((v.to_string(), format!("{var} in the environment")));
    }
    let mut ini_files: Vec<String> = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--ini" {
            ini_files.extend(it.next().cloned());
        } else if let Some(f) = a.strip_prefix("--ini=") {
            ini_files.push(f.to_string());
        } else if !a.starts_with('-') && a.ends_with(".ini") {
            ini_files.push(a.clone());
        }
    }
    let pwd = get(env, "PWD").filter(|p| p.starts_with('/'));
    for file in ini_files {
        let text = read_ini(&file).or_else(|| {
            let base = pwd.filter(|_| !file.starts_with('/'))?;
            read_ini(&format!("{}/{file}", base.trim_end_matches('/')))
        });
        if let Some(v) = text.as_deref().and_then(|t| ini_value(t, key)) {
            return Some((v.to_string(), format!("{key} in {file}")));
        }
    }
    None
}

fn timeout(seconds: f64, source: String) -> GracefulTimeout {
    GracefulTimeout {
        ms: (seconds * 1000.0).round() as u64,
        source,
    }
}

/// `key = value` in the `[uwsgi]` section of an ini text (underscores accepted as dashes).
fn ini_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut in_uwsgi = true;
    let mut found = None;
    for line in text.lines().map(str::trim) {
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_uwsgi = section.trim() == "uwsgi";
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if in_uwsgi && !line.starts_with(';') && k.trim().replace('_', "-") == key {
            found = Some(v.trim());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::env::tests::s;

    #[test]
    fn gunicorn_timeout_in_gunicorn_order() {
        let mut none = |_: &str| None;
        let t = gunicorn_graceful_timeout(
            "/proc/1/environ",
            &s(&["gunicorn", "--graceful-timeout", "5"]),
            &[],
            &mut none,
        );
        assert_eq!(
            (t.ms, t.source.as_str()),
            (5000, "--graceful-timeout on the command line")
        );
        let env = vec![(
            "GUNICORN_CMD_ARGS".to_string(),
            "--graceful-timeout=2.5".to_string(),
        )];
        assert_eq!(
            gunicorn_graceful_timeout("/proc/1/environ", &s(&["gunicorn"]), &env, &mut none).ms,
            2500
        );
        let mut conf = |p: &str| {
            (p == "g.py").then(|| ("graceful_timeout = 7\n".to_string(), "g.py".to_string()))
        };
        let t = gunicorn_graceful_timeout(
            "/proc/1/environ",
            &s(&["gunicorn", "-c", "g.py"]),
            &[],
            &mut conf,
        );
        assert_eq!(
            (t.ms, t.source.as_str()),
            (7000, "graceful_timeout in g.py")
        );
        let t = gunicorn_graceful_timeout("/proc/1/environ", &s(&["gunicorn"]), &[], &mut none);
        assert_eq!((t.ms, t.source.as_str()), (30000, "gunicorn's default"));
    }

    #[test]
    fn uwsgi_mercy_from_flags_env_and_ini() {
        let mut none = |_: &str| None;
        let t =
            uwsgi_graceful_timeout(&s(&["uwsgi", "--worker-reload-mercy", "4"]), &[], &mut none);
        assert_eq!(t.ms, 4000);
        let env = vec![("UWSGI_WORKER_RELOAD_MERCY".to_string(), "9".to_string())];
        assert_eq!(
            uwsgi_graceful_timeout(&s(&["uwsgi"]), &env, &mut none).ms,
            9000
        );
        let mut ini = |p: &str| {
            (p == "/srv/a.ini").then(|| "[uwsgi]\nreload-mercy = 8\nworker_reload_mercy = 3\n[other]\nworker-reload-mercy = 1\n".to_string())
        };
        let t = uwsgi_graceful_timeout(&s(&["uwsgi", "--ini", "/srv/a.ini"]), &[], &mut ini);
        assert_eq!(
            (t.ms, t.source.as_str()),
            (3000, "worker-reload-mercy in /srv/a.ini")
        );
        assert_eq!(
            uwsgi_graceful_timeout(&s(&["uwsgi"]), &[], &mut none).ms,
            60000
        );
    }
}
