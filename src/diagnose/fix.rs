//! Fix texts per framework: the hook and the snippet a user pastes. Rules pick one of these so
//! the same advice reads the same everywhere.

use crate::snapshot::{Framework, Snapshot, WorkerKind};

/// Set the SDK up in each worker after fork (FC101, FC102, FC103, FC104, FC302, FC203...).
pub fn init_after_fork(framework: Framework) -> String {
    match framework {
        Framework::Gunicorn | Framework::Unknown => GUNICORN.to_string(),
        Framework::Uwsgi => UWSGI.to_string(),
        Framework::Celery => CELERY.to_string(),
        Framework::Rq => RQ.to_string(),
        Framework::Multiprocessing => MULTIPROCESSING.to_string(),
        Framework::Uvicorn => UVICORN.to_string(),
        Framework::Hypercorn => HYPERCORN.to_string(),
        Framework::Granian => GRANIAN.to_string(),
    }
}

/// [`init_after_fork`] for the tree at hand: under gunicorn, with what its worker class
/// changes (gevent and eventlet patch threads; UvicornWorker also has the ASGI lifespan).
pub fn init_after_fork_in(snap: &Snapshot) -> String {
    let base = init_after_fork(snap.framework);
    if snap.framework != Framework::Gunicorn {
        return base;
    }
    match snap
        .worker_class
        .as_ref()
        .map(|w| (w.kind, w.name.as_str()))
    {
        Some((WorkerKind::Gevent | WorkerKind::Eventlet, name)) => format!(
            "{base}\n\nWith -k {name}: post_fork runs before the worker monkey-patches the \
             standard library, so the SDK's exporters are real OS threads there. Set up later \
             (post_worker_init, or at import without --preload) they run as greenlets on the \
             worker's hub: no OS thread, invisible to /proc and to this check."
        ),
        Some((WorkerKind::Uvicorn, name)) => format!(
            "{base}\n\nWith -k {name} each worker is forked like a sync worker, so post_fork \
             works; so does setting the SDK up in the ASGI lifespan startup, which runs in each \
             worker after fork (not with --preload and an import-time set-up)."
        ),
        _ => base,
    }
}

/// Set the SDK up in every spawned worker (FC108): code that runs in the worker, never only
/// under the parent's `if __name__ == "__main__":`.
pub fn init_in_spawned_workers(framework: Framework) -> String {
    match framework {
        Framework::Uvicorn => UVICORN.to_string(),
        Framework::Hypercorn => HYPERCORN.to_string(),
        Framework::Granian => GRANIAN.to_string(),
        Framework::Gunicorn | Framework::Uwsgi | Framework::Celery | Framework::Rq => {
            init_after_fork(framework)
        }
        Framework::Multiprocessing | Framework::Unknown => MULTIPROCESSING_SPAWN.to_string(),
    }
}

const UVICORN: &str = "\
uvicorn --workers N starts each worker as a fresh interpreter (multiprocessing spawn) that
imports the app module again and never runs the launcher's `if __name__ == \"__main__\":` block,
nor anything the parent set up. Set the SDK up where every worker runs it: at import in the app
module (\"app:app\"), or in the ASGI lifespan startup, flushing in its shutdown:

    # app.py, imported by every worker
    from contextlib import asynccontextmanager
    from opentelemetry import metrics, trace

    @asynccontextmanager
    async def lifespan(app):
        setup_telemetry()   # your function that builds the providers
        yield
        trace.get_tracer_provider().shutdown()   # exports what is pending
        metrics.get_meter_provider().shutdown()

    app = FastAPI(lifespan=lifespan)   # or Starlette(lifespan=lifespan)

A set-up in the script that calls uvicorn.run(..., workers=N), or under its __main__ block,
runs only in the parent, which serves no request.";

const HYPERCORN: &str = "\
hypercorn --workers N starts each worker as a fresh interpreter (multiprocessing spawn) that
imports the app module again; nothing the parent set up is there. Set the SDK up where every
worker runs it: at import in the app module, or in the ASGI lifespan startup (Quart:
@app.before_serving), flushing at shutdown:

    # app.py, imported by every worker
    from contextlib import asynccontextmanager
    from opentelemetry import metrics, trace

    @asynccontextmanager
    async def lifespan(app):
        setup_telemetry()   # your function that builds the providers
        yield
        trace.get_tracer_provider().shutdown()
        metrics.get_meter_provider().shutdown()

A set-up in a launcher script's __main__ block runs only in the parent, which serves no request.";

const GRANIAN: &str = "\
Granian loads the application in each worker process (forked before Python 3.14, spawned from
3.14 on). Set the SDK up where every worker runs it: at import in the app module, or in the ASGI
lifespan startup (with --interface rsgi: in the app's __rsgi_init__), flushing at shutdown:

    # app.py, loaded by every worker
    from contextlib import asynccontextmanager
    from opentelemetry import metrics, trace

    @asynccontextmanager
    async def lifespan(app):
        setup_telemetry()   # your function that builds the providers
        yield
        trace.get_tracer_provider().shutdown()
        metrics.get_meter_provider().shutdown()

Not in a script that embeds Granian before calling serve(): that runs in the parent only (and,
where workers are forked, is inherited half-working by each of them).";

const MULTIPROCESSING_SPAWN: &str = "\
Processes started with the spawn or forkserver start method (the default on Linux from Python
3.14) are fresh interpreters: they import the main module as __mp_main__, so its
`if __name__ == \"__main__\":` block never runs there, and nothing of the parent's SDK comes
along. Set the SDK up in the function each process runs first, the Pool initializer or the
start of a Process target, and flush with a finalizer:

    import multiprocessing
    from multiprocessing.util import Finalize

    def init_worker():
        setup_telemetry()   # your function that builds the providers
        from opentelemetry import metrics, trace
        Finalize(None, trace.get_tracer_provider().shutdown, exitpriority=10)
        Finalize(None, metrics.get_meter_provider().shutdown, exitpriority=10)

    pool = multiprocessing.get_context(\"spawn\").Pool(4, initializer=init_worker)";

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

/// RQ: set-up and flush are one fix, in the work horse (FC101 and FC209 give the same).
const RQ: &str = "\
An RQ worker forks a work horse for every job, and the horse leaves with os._exit, so atexit
never runs there. Set the SDK up in the horse and shut it down before the horse leaves, in a
Worker subclass (RQ calls perform_job only inside the horse; verified with RQ 2.12):

    # myworker.py; start the worker with: rq worker --worker-class myworker.TelemetryWorker
    # (or rq worker-pool --worker-class myworker.TelemetryWorker)
    from rq.worker import Worker

    class TelemetryWorker(Worker):
        def perform_job(self, job, queue):
            setup_telemetry()   # your function that builds the providers
            try:
                return super().perform_job(job, queue)
            finally:
                from opentelemetry import _logs, metrics, trace
                for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(),
                                 _logs.get_logger_provider()):
                    if hasattr(provider, \"shutdown\"):
                        provider.shutdown()   # exports what is pending, then stops

Import the SDK's modules in the worker process if you like, but build no provider there: each
horse is a new process, set up per job, whose data arrives under its own service.instance.id.
(SimpleWorker runs jobs in the worker itself: set the SDK up once there instead.)";

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

/// Flush what was recorded since the last export before a worker leaves (FC209).
pub fn flush_on_exit(framework: Framework) -> String {
    match framework {
        Framework::Gunicorn | Framework::Unknown => GUNICORN_FLUSH.to_string(),
        Framework::Uwsgi => UWSGI_FLUSH.to_string(),
        Framework::Celery => CELERY_FLUSH.to_string(),
        Framework::Rq => RQ.to_string(),
        Framework::Multiprocessing => MULTIPROCESSING_FLUSH.to_string(),
        Framework::Uvicorn | Framework::Hypercorn | Framework::Granian => ASGI_FLUSH.to_string(),
    }
}

const ASGI_FLUSH: &str = "\
Flush in the ASGI lifespan shutdown, which each worker runs when it stops gracefully, and keep
the SDK's own exit flush on (do not build the providers with shutdown_on_exit=False):

    @asynccontextmanager
    async def lifespan(app):
        setup_telemetry()   # your function that builds the providers
        yield
        from opentelemetry import _logs, metrics, trace
        for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(),
                         _logs.get_logger_provider()):
            if hasattr(provider, \"shutdown\"):
                provider.shutdown()   # exports what is pending, then stops

A worker killed after the server's graceful timeout loses whatever it had not exported.";

const GUNICORN_FLUSH: &str = "\
Flush before each worker leaves, and keep the SDK's own exit flush on:

    # gunicorn.conf.py
    def worker_exit(server, worker):
        from opentelemetry import _logs, metrics, trace
        for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(),
                         _logs.get_logger_provider()):
            if hasattr(provider, \"shutdown\"):
                provider.shutdown()   # exports what is pending, then stops

and do not build the providers with shutdown_on_exit=False (the default, True, registers an
atexit flush that runs when a sync worker leaves through sys.exit). Keep gunicorn's
graceful_timeout above the time a flush can take (the exporters' timeout, 10 s by default):
a worker SIGKILLed after graceful_timeout loses whatever it had not exported.";

const UWSGI_FLUSH: &str = "\
The uWSGI master never runs Python atexit handlers, so flush explicitly when a worker stops:

    import uwsgi
    from opentelemetry import metrics, trace

    def flush_telemetry():
        trace.get_tracer_provider().shutdown()
        metrics.get_meter_provider().shutdown()

    uwsgi.atexit = flush_telemetry

and stop uWSGI with SIGTERM to the master (--die-on-term), not to the whole process group.";

const CELERY_FLUSH: &str = "\
Pool processes leave with os._exit (at a warm shutdown, and whenever --max-tasks-per-child
recycles them), so atexit never runs there: set the SDK up in each pool process and flush it
in worker_process_shutdown (verified with Celery 5.7 prefork, with --max-tasks-per-child=1 too):

    from celery.signals import worker_process_init, worker_process_shutdown

    @worker_process_init.connect(weak=False)
    def init_telemetry(*args, **kwargs):
        setup_telemetry()   # your function that builds the providers (not at import time)

    @worker_process_shutdown.connect(weak=False)
    def flush_telemetry(*args, **kwargs):
        from opentelemetry import _logs, metrics, trace
        for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(),
                         _logs.get_logger_provider()):
            if hasattr(provider, \"shutdown\"):
                provider.shutdown()   # exports what is pending, then stops";

const MULTIPROCESSING_FLUSH: &str = "\
Pool children leave with os._exit, so atexit never runs: register a finalizer in the pool's
initializer, which multiprocessing runs before the child exits:

    from multiprocessing.util import Finalize

    def init_worker():
        setup_telemetry()   # your function that builds the providers
        from opentelemetry import metrics, trace
        Finalize(None, trace.get_tracer_provider().shutdown, exitpriority=10)
        Finalize(None, metrics.get_meter_provider().shutdown, exitpriority=10)";
