//! Fix texts per framework: the hook and the snippet a user pastes. Rules pick one of these so
//! the same advice reads the same everywhere.

use crate::snapshot::Framework;

/// Set the SDK up in each worker after fork (FC101, FC102, FC103, FC104, FC302, FC203...).
pub fn init_after_fork(framework: Framework) -> String {
    match framework {
        Framework::Gunicorn | Framework::Unknown => GUNICORN.to_string(),
        Framework::Uwsgi => UWSGI.to_string(),
        Framework::Celery => CELERY.to_string(),
        Framework::Multiprocessing => MULTIPROCESSING.to_string(),
    }
}

const GUNICORN: &str = "\
Set the SDK up in each worker, in gunicorn.conf.py, and not at import time in the app
(or drop --preload / preload_app):

    def post_fork(server, worker):
        from otel_setup import setup_telemetry   # your function that builds the providers
        setup_telemetry()

    def worker_exit(server, worker):
        from opentelemetry import metrics, trace
        for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
            if hasattr(provider, \"shutdown\"):
                provider.shutdown()

With opentelemetry-instrument, run gunicorn without it and call the same set-up in post_fork.";

const UWSGI: &str = "\
uWSGI forks in C, so Python's at-fork hooks do not run. Either load the app in each worker:

    [uwsgi]
    lazy-apps = true

or set the SDK up after fork:

    from uwsgidecorators import postfork

    @postfork
    def init_telemetry():
        setup_telemetry()   # your function that builds the providers

(--enable-threads alone does not help; also consider --py-call-osafterfork and --die-on-term.)";

const CELERY: &str = "\
Set the SDK up in each pool process and flush before it leaves (billiard exits with os._exit,
so atexit handlers never run):

    from celery.signals import worker_process_init, worker_process_shutdown

    @worker_process_init.connect(weak=False)
    def init_telemetry(*args, **kwargs):
        setup_telemetry()   # your function that builds the providers

    @worker_process_shutdown.connect(weak=False)
    def flush_telemetry(*args, **kwargs):
        from opentelemetry import metrics, trace
        trace.get_tracer_provider().shutdown()
        metrics.get_meter_provider().shutdown()";

const MULTIPROCESSING: &str = "\
Set the SDK up in the pool's initializer and flush with a finalizer (children leave with
os._exit, so atexit handlers never run):

    import multiprocessing
    from multiprocessing.util import Finalize

    def init_worker():
        setup_telemetry()   # your function that builds the providers
        from opentelemetry import metrics, trace
        Finalize(None, trace.get_tracer_provider().shutdown, exitpriority=10)
        Finalize(None, metrics.get_meter_provider().shutdown, exitpriority=10)

    pool = multiprocessing.Pool(4, initializer=init_worker)";

/// Upgrade the SDK (FC106); setting it up after fork works on every version.
pub fn upgrade_sdk(min: &str, framework: Framework) -> String {
    format!(
        "Upgrade the OpenTelemetry SDK to {min} or newer (pip install -U 'opentelemetry-sdk>={min}' \
         and the matching opentelemetry-exporter-otlp-* packages), and set it up after fork:\n\n{}",
        init_after_fork(framework)
    )
}

/// gRPC exporter in a forking server (FC105).
pub fn grpc_fork(framework: Framework) -> String {
    format!(
        "Create the gRPC exporter only after fork, and do not turn gRPC's fork support off \
         (unset GRPC_ENABLE_FORK_SUPPORT, or set it to 1 with GRPC_POLL_STRATEGY=poll), \
         or use the HTTP exporter (OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf).\n\n{}",
        init_after_fork(framework)
    )
}
