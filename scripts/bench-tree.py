"""A pre-fork tree for scripts/bench-check.sh: 1 master + N forked workers, each with two
SDK-named threads and an established TCP connection (the master's is inherited by all).

Prints "ready <master pid>" once every worker has started its threads. Stdlib only.
"""
import os
import socket
import sys
import threading
import time

nworkers = int(sys.argv[1]) if len(sys.argv) > 1 else 64

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1024)
addr = listener.getsockname()


def exporter_threads():
    for name in ("OtelPeriodicExportingMetricReader", "OtelBatchSpanRecordProcessor"):
        ev = threading.Event()
        threading.Thread(target=lambda e=ev: [e.wait(1.0) for _ in iter(int, 1)],
                         name=name, daemon=True).start()


conn = socket.create_connection(addr)
exporter_threads()
r, w = os.pipe()
kids = []
for _ in range(nworkers):
    pid = os.fork()
    if pid == 0:
        os.close(r)
        own = socket.create_connection(addr)
        exporter_threads()
        os.write(w, b"x")
        while True:
            time.sleep(3600)
    kids.append(pid)
os.close(w)
got = 0
while got < nworkers:
    got += len(os.read(r, 4096))
os.write(1, b"ready %d\n" % os.getpid())
while True:
    time.sleep(3600)
