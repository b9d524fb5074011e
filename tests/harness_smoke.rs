//! The end-to-end harness itself: a real gunicorn (post_fork set-up, 2 sync workers) exports all
//! three signals to the stand-in collector, and dropping the guards leaves no process behind.
//! Needs the `current` venv (built on first use by scripts/setup-venvs.sh).
mod common;

use common::{live_members, Collector, Gunicorn};
use std::time::Duration;

#[test]
fn postfork_gunicorn_exports_every_signal_and_leaves_nothing_behind() {
    let collector = Collector::start(0.0);
    let url = collector.url();
    let gunicorn = Gunicorn::start(
        "current",
        "postfork",
        2,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_BLRP_SCHEDULE_DELAY", "200"),
        ],
    );
    let workers = gunicorn.worker_pids();
    assert_eq!(workers.len(), 2, "workers {workers:?}");

    let served = gunicorn.hit("/", 10);
    assert!(
        served.iter().all(|pid| workers.contains(pid)),
        "served by {served:?}, workers {workers:?}"
    );
    assert_eq!(gunicorn.hit("/health", 1).len(), 1);
    collector.wait_for(Duration::from_secs(30), |s| {
        s.metrics > 0 && s.traces > 0 && s.logs > 0
    });

    let groups = [gunicorn.pgid(), collector.pgid()];
    drop(gunicorn);
    drop(collector);
    for pgid in groups {
        assert_eq!(
            live_members(pgid),
            Vec::<i32>::new(),
            "group {pgid} survived"
        );
    }
}
