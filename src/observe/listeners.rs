//! Listening sockets and who answers them (docs/failure-modes.md#prometheus-listener-inherited):
//! the threads of each process waiting on a listener, and whether a Prometheus client is
//! installed and in multiprocess mode. Facts only; FC109 judges.

use std::collections::HashMap;

use crate::proc::{polled, rootfs};
use crate::snapshot::{Process, PrometheusFacts};

/// Marks on each listening socket of `p` the threads blocked on it now (in `poll` or
/// `accept`). Read live, not from the samples: a poll array's address means something only
/// while the thread waits in that call.
pub fn mark_polled(p: &mut Process) {
    if !p.sockets.iter().any(|s| s.state == "LISTEN") {
        return;
    }
    for (tid, fds) in polled::waiting_threads(p.pid) {
        for s in p.sockets.iter_mut() {
            if s.state == "LISTEN" && fds.contains(&s.fd) && !s.polled_by.contains(&tid) {
                s.polled_by.push(tid);
            }
        }
    }
}

/// Installed versions found in site-packages directories, by (root, directory).
pub type SiteCache = HashMap<(String, String), (Option<String>, Option<String>)>;

/// prometheus_client and opentelemetry-exporter-prometheus in the process's site-packages
/// (as the target sees it), and `PROMETHEUS_MULTIPROC_DIR` from its environment.
pub fn prometheus_facts(
    p: &Process,
    env: &[(String, String)],
    cache: &mut SiteCache,
) -> PrometheusFacts {
    let multiproc_dir = ["PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"]
        .iter()
        .find_map(|k| env.iter().find(|(n, _)| n == k))
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty());
    let (client_version, otel_exporter_version) = match &p.python.site_packages {
        Some(site) => cache
            .entry((rootfs::root_id(p.pid), site.clone()))
            .or_insert_with(|| {
                let names = rootfs::target_path(p.pid, site)
                    .and_then(|abs| rootfs::list_dir(p.pid, &abs))
                    .unwrap_or_default();
                versions(&names)
            })
            .clone(),
        None => (None, None),
    };
    PrometheusFacts {
        client_version,
        otel_exporter_version,
        multiproc_dir,
    }
}

/// (prometheus_client, opentelemetry-exporter-prometheus) versions from dist-info names.
fn versions(names: &[String]) -> (Option<String>, Option<String>) {
    let mut out = (None, None);
    for n in names {
        let Some((project, version)) = n
            .strip_suffix(".dist-info")
            .and_then(|stem| stem.split_once('-'))
        else {
            continue;
        };
        match project
            .to_ascii_lowercase()
            .replace(['-', '.'], "_")
            .as_str()
        {
            "prometheus_client" => out.0 = Some(version.to_string()),
            "opentelemetry_exporter_prometheus" => out.1 = Some(version.to_string()),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_dist_info() {
        let names: Vec<String> = [
            "prometheus_client-0.26.0.dist-info",
            "prometheus_client",
            "opentelemetry_exporter_prometheus-0.66b2.dist-info",
            "opentelemetry_sdk-1.45.2.dist-info",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            versions(&names),
            (Some("0.26.0".into()), Some("0.66b2".into()))
        );
        assert_eq!(versions(&[]), (None, None));
    }
}
