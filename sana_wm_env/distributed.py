"""Scale out on Ray: connect to a cluster (or start one here) and run independent tasks on it.

Every ``--ray`` command goes through this module: :func:`connect` joins or starts the cluster (:func:`attach`
for a connection that outlives a ``with`` block, as :class:`~sana_wm_env.envs.ray_vector.RayVectorEnv` keeps);
:func:`run_tasks` runs one function over a list of argument tuples as Ray tasks (a progress bar, results in
submission order, tasks retried when their worker dies) and :func:`scheduling_gpus` says whether tasks should
ask for a GPU.
Ray is an optional extra (``pip install "sana-wm-env[ray]"``); nothing imports it until a ``--ray`` run starts.

Addresses (``--ray [ADDRESS]``):

``auto`` (``--ray`` alone)
    join the cluster this machine belongs to (``RAY_ADDRESS``, or one started here with ``ray start``); without
    one, start a local Ray instance on this machine's cores.
``local``
    always start a new local Ray instance (this machine only).
anything else
    the address of a running cluster's head: ``HOST:6379`` (from a cluster node) or ``ray://HOST:10001``
    (Ray Client, from outside the cluster).

Tasks run the same code as the single-machine path with ``torch.set_num_threads(threads)``, so their results
are the same numbers and bytes. The workers need this package installed (the same version) on every node.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

__all__ = ["ADDRESS_HELP", "MAX_RETRIES", "attach", "connect", "require_ray", "run_tasks", "scheduling_gpus"]

MAX_RETRIES = 3  # a task whose worker process dies (killed, out of memory, node lost) runs again up to this often
ADDRESS_HELP = ("run on a Ray cluster (needs pip install \"sana-wm-env[ray]\"): --ray alone or --ray auto joins "
                "the cluster this machine belongs to (RAY_ADDRESS or `ray start`) or else starts a local one; "
                "--ray local starts a local one; --ray HOST:6379 or ray://HOST:10001 joins that cluster")


def require_ray() -> ModuleType:
    """The ``ray`` module; a missing one raises MissingDependencyError naming the ``ray`` extra."""
    from world_model.optional import require

    return require("ray", extra="ray", feature="running on a Ray cluster (--ray)")


def _init_address(address: str | None) -> str | None:
    """``ray.init``'s address for a ``--ray`` value (None: Ray's join-or-start)."""
    if address is None or address == "auto":
        return None
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"--ray: expected auto, local or a cluster address (HOST:PORT, ray://HOST:PORT), got "
                         f"{address!r}")
    return address.strip()


def attach(address: str | None = "auto", *, num_cpus: int | None = None) -> tuple[ModuleType, bool]:
    """Connect this process to Ray unless it is connected already; returns ``(ray, started)``, ``started``
    telling whether this call made the connection (its caller then shuts it down with ``ray.shutdown()``).

    ``num_cpus`` caps a local instance started here (default: all cores).
    """
    address = _init_address(address)
    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    if address not in (None, "local"):
        _check_reachable(address)
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if num_cpus is not None and address in (None, "local"):
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as err:  # no cluster at that address
        raise ValueError(f"--ray {address}: cannot connect ({err})") from None
    return ray, True


@contextlib.contextmanager
def connect(address: str | None = "auto", *, num_cpus: int | None = None) -> Iterator[ModuleType]:
    """Connect to Ray for the duration of a ``with`` block and yield the ``ray`` module (see :func:`attach`).

    A connection that exists already (``ray.init`` called by the caller) is used as it is and left open;
    one made here is shut down at the end.
    """
    ray, started = attach(address, num_cpus=num_cpus)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once (ValueError) when nothing accepts connections at a ``HOST:PORT`` or ``ray://HOST:PORT``
    address, instead of waiting minutes for Ray's own connection timeout."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray {address}: expected auto, local, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ValueError(f"--ray {address}: no Ray cluster answers there ({err}); start one with `ray start --head` "
                         "or pass its head's address") from None


def scheduling_gpus(device: str | None = None) -> float:
    """GPUs each task asks for: 1 when the cluster has GPUs and ``device`` is a CUDA device or unset, else 0."""
    ray = require_ray()
    if device is not None and not str(device).startswith("cuda"):
        return 0.0
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _call(fn: Callable[..., Any], threads: int, args: tuple) -> Any:
    """Body of every task: fix torch's thread count (deterministic, and no oversubscription), then ``fn(*args)``."""
    import torch

    torch.set_num_threads(threads)
    return fn(*args)


def run_tasks(fn: Callable[..., Any], jobs: Sequence[tuple], *, desc: str, progress: bool = True,
              threads: int = 1, num_cpus: float = 1, num_gpus: float = 0, max_retries: int = MAX_RETRIES,
              on_result: Callable[[int, Any], Any] | None = None, unit: str = "task") -> list[Any]:
    """Run ``fn(*job)`` for every job as a Ray task and return the results in the order of ``jobs``.

    Call it inside :func:`connect`. ``fn`` must reach the workers: a module-level function of an installed
    package (this project's), or a closure, which Ray ships by value. ``on_result(i, result)`` runs in this
    process as each task finishes (for example to write its output), in completion order; the list then holds
    what it returned, so large results are not all kept.
    A task whose worker dies runs again (``max_retries`` times); an exception raised by ``fn`` is not retried
    and is raised here as itself (the first one, in completion order), after the other tasks are cancelled.
    Ctrl-C cancels the tasks still pending.
    """
    from tqdm import tqdm

    ray = require_ray()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    task = ray.remote(_call).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                                     retry_exceptions=False)
    fn_ref = ray.put(fn)
    refs = [task.remote(fn_ref, threads, tuple(job)) for job in jobs]
    position = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    try:
        with tqdm(total=len(refs), desc=desc, unit=unit, disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = position[ref]
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as err:
                        cause = getattr(err, "cause", None)
                        if isinstance(cause, Exception):
                            raise cause from None
                        raise
                    results[i] = result if on_result is None else on_result(i, result)
                    bar.update(1)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return results
