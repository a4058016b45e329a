"""`metrix serve --engine ray --replicas N`: the JSON API in N Ray Serve replicas behind Ray Serve's
HTTP proxy, on one address.

Each replica is the same FastAPI app as one `--workers` process (app/workers.py open_api): it opens
the index memory-mapped and follows its CURRENT generation with its own LiveIndex watcher, started
and stopped by the app's lifespan, so a rebuild reaches every replica within a second or so. The
index folder and the model must be readable at the same absolute paths on every node that runs a
replica (one machine, or a shared filesystem). Every response names its replica in
`X-Metrix-Replica`. As with --workers, the page is served (with --page-port) by the process that
runs this command, not by the replicas: Ray Serve's proxy does not keep a Gradio session on one
replica.

Ray is imported only here, and only when called: `import metrix.app` does not import it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from .workers import ApiOptions, open_api

log = logging.getLogger("metrix.app")
APP_NAME, DEPLOYMENT = "metrix", "metrix-api"
REPLICA_HEADER = "X-Metrix-Replica"
#: CPUs Ray reserves for each replica (its query embedding runs on them).
REPLICA_CPUS = 1.0


def api_deployment(replicas: int, cpus: float = REPLICA_CPUS):
    """The deployment class, `replicas` copies of the API; bind it to an ApiOptions."""
    from ray import serve

    @serve.deployment(name=DEPLOYMENT, num_replicas=replicas, ray_actor_options={"num_cpus": cpus})
    @serve.ingress()
    class MetrixApi:
        def __init__(self, options: ApiOptions):
            self.options = options

        def __serve_build_asgi_app__(self):
            replica = serve.get_replica_context().replica_id.unique_id
            return open_api(self.options, REPLICA_HEADER, f"{replica} pid {os.getpid()}")

    return MetrixApi


def connect(address: str | None = None) -> None:
    """The cluster at `address` (else RAY_ADDRESS), else a new local one on this machine: never
    whichever cluster happened to be started here last, as ray.init() alone would."""
    import ray

    ray.init(
        address=address or os.environ.get("RAY_ADDRESS") or "local",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )


def deploy(options: ApiOptions, host: str, port: int, replicas: int, cpus: float = REPLICA_CPUS) -> None:
    """Start Serve's proxy on host:port and run the API's replicas; returns once they are up."""
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    serve.run(api_deployment(replicas, cpus).bind(options), name=APP_NAME, route_prefix="/")


def serve_replicas(
    options: ApiOptions, host: str, port: int, replicas: int, start_page: Callable[[], object] | None = None
) -> int:
    """Serve until SIGTERM or SIGINT, then delete the application and leave the cluster (a local
    cluster started here stops with it); returns the exit status: 0, or 1 if the replicas failed."""
    import ray
    from ray import serve

    connect()
    stop = threading.Event()
    # after ray.init, which installs a fatal-signal handler of its own that aborts the driver
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda received, frame: stop.set())
    if (cpus := ray.cluster_resources().get("CPU", 0)) < replicas * REPLICA_CPUS:
        log.warning(
            "%d replicas need %g CPUs and the cluster has %g: some wait until it grows",
            replicas,
            replicas * REPLICA_CPUS,
            cpus,
        )
    page = None
    try:
        try:
            deploy(options, host, port, replicas)
        except RuntimeError as failure:  # serve.run: the application went to DEPLOY_FAILED
            log.error("Ray Serve could not start the API: %s", str(failure).strip().splitlines()[0])
            return 1
        log.info("%d replicas of %s answering on %s:%d", replicas, DEPLOYMENT, host, port)
        page = start_page() if start_page is not None else None
        while not stop.wait(0.5):
            pass
    finally:
        if page is not None:
            page.stop()
        serve.delete(APP_NAME)
        ray.shutdown()
    return 0
