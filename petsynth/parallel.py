"""Per-study work in parallel: in this process, in a pool of local processes, or on a Dask cluster.

``prepare`` and batch ``translate`` and ``evaluate`` run one task per study through :func:`run_each`:

- ``workers=1``, no ``dask``: one study after the other, here;
- ``workers=N``: a pool of N local processes (spawned, one torch thread each);
- ``dask="tcp://host:8786"``: the tasks go to a running Dask cluster (``dask scheduler`` and ``dask worker``
  processes, from the ``distributed`` package: ``pip install 'petsynth[dask]'``); ``dask="local"`` starts a
  ``LocalCluster`` of ``workers`` processes on this machine for the run.

On a cluster, every worker must see the same paths (the inputs and the output folder on shared storage: NFS,
a parallel file system, or the same mount everywhere), and run the same petsynth and Python. A task that
fails on a worker, or whose worker dies, is run again by Dask on another worker (up to its
``distributed.scheduler.allowed-failures``, 3 by default); the tasks themselves are idempotent (a study that an
earlier attempt finished is not written twice), so no study is lost or duplicated. A task that keeps failing
becomes a failed result for that study; the others go on.

Dask moves the tasks' arguments and results between processes with pickle (cloudpickle); that is between
petsynth's own processes, never a file a user hands us.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

#: The install hint when ``distributed`` is missing.
DASK_HINT = "the Dask cluster needs the distributed package: pip install 'petsynth[dask]'"
#: Dask settings for the workers of a local cluster. Dask's nanny starts its workers with
#: MALLOC_TRIM_THRESHOLD_=65536, which fixes glibc's otherwise adaptive thresholds: torch's large tensors are
#: then mapped and unmapped at every allocation. Measured on this project's 2-core CPU, the translation of an
#: 81-slice phantom study took 13.5 s in one process and 22.6 s with that variable set. None unsets it.
#: Workers of a cluster you start yourself: ``dask worker ... --no-nanny``, or the environment variable
#: DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_=None where the nanny starts.
LOCAL_WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
#: How long to wait for a running scheduler to answer (seconds).
CONNECT_TIMEOUT_S = 30


class ClusterError(RuntimeError):
    """No Dask cluster could be reached or started; the message says which and why."""


def _one_thread() -> None:
    """Worker set-up: one torch thread per process (the processes are the parallelism)."""
    import torch

    torch.set_num_threads(1)


def _call_in_worker(fn: Callable, *args: Any) -> Any:
    _one_thread()
    return fn(*args)


@contextlib.contextmanager
def dask_client(address: str, workers: int = 1) -> Iterator[Any]:
    """A ``distributed.Client`` for ``address`` ("local": a ``LocalCluster`` of ``workers`` processes with one
    thread each, closed at the end; else a running scheduler such as ``tcp://10.0.0.5:8786``)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError(DASK_HINT) from None
    import dask

    cluster = None
    environ = dict(os.environ)  # a local cluster's nannies write their workers' settings into this process's
    with dask.config.set(LOCAL_WORKER_CONFIG):
        try:
            if address == "local":
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, silence_logs=logging.ERROR)
                client = Client(cluster)
            else:
                client = Client(address, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as err:
            if cluster is not None:
                cluster.close()
            raise ClusterError(f"no Dask scheduler answered at {address}: {err}") from None
        try:
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
            os.environ.clear()
            os.environ.update(environ)


def run_each(fn: Callable[..., Any], jobs: Sequence[Any], args: Sequence[Any] = (), *, workers: int = 1,
             dask: str | None = None, failed: Callable[[Any, BaseException], Any] | None = None,
             name: str = "task", ordered: bool = False) -> Iterator[tuple[int, Any]]:
    """``fn(job, *args)`` for every job, yielding ``(index of the job, result)`` as each finishes, or in the
    jobs' order when ``ordered`` (all are submitted at once either way; results wait until they are taken).

    ``fn`` and its arguments must be picklable (a module-level function) for a pool or a cluster. An exception
    that escapes ``fn`` (or a worker lost more often than Dask allows) becomes ``failed(job, error)`` when
    ``failed`` is given, else it propagates. ``name`` prefixes the Dask task keys."""
    if not jobs:
        return
    if dask:
        yield from _run_dask(fn, jobs, args, dask, workers, failed, name, ordered)
    elif workers <= 1:
        for n, job in enumerate(jobs):
            try:
                yield n, fn(job, *args)
            except Exception as err:  # noqa: BLE001 - one study's fault is that study's result
                if failed is None:
                    raise
                yield n, failed(job, err)
    else:
        # spawn, not fork: a forked child of a process that already ran torch's thread pools can deadlock
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_thread) as pool:
            futures = {pool.submit(fn, job, *args): n for n, job in enumerate(jobs)}
            for fut in (list(futures) if ordered else as_completed(futures)):
                n = futures[fut]
                try:
                    yield n, fut.result()
                except Exception as err:  # noqa: BLE001
                    if failed is None:
                        raise
                    yield n, failed(jobs[n], err)


def _run_dask(fn, jobs, args, address, workers, failed, name, ordered) -> Iterator[tuple[int, Any]]:
    import uuid

    with dask_client(address, workers) as client:
        from distributed import as_completed as dask_completed

        run = uuid.uuid4().hex[:8]
        futures = {}
        for n, job in enumerate(jobs):
            fut = client.submit(_call_in_worker, fn, job, *args, key=f"{name}-{run}-{n}", pure=False, retries=1)
            futures[fut.key] = (n, fut)
        submitted = [f for _, f in futures.values()]
        for fut in (submitted if ordered else dask_completed(submitted)):
            n, _ = futures[fut.key]
            try:
                yield n, fut.result()
            except Exception as err:  # noqa: BLE001 - includes distributed's KilledWorker
                if failed is None:
                    raise
                yield n, failed(jobs[n], err)
            finally:
                fut.release()
