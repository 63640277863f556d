"""`benchmark.py scheduler`: the Dask scheduler of a --cluster run, started from ragsweep's own environment.

The scheduler unpickles the stage tasks the head submits, so it must be able to import ragsweep. A
plain `dask scheduler` from an environment where ragsweep is not installed fails every stage with
"Error during deserialization of the task graph"; this one cannot.
"""

from __future__ import annotations

import asyncio

from .cluster import security
from .config import scheduler_address
from .errors import BackendUnavailableError, ConfigError


def serve(args) -> int:
    """Run the scheduler on HOST:PORT until it is stopped (Ctrl-C or SIGTERM)."""
    import dask
    from distributed import Scheduler

    scheme = "tls" if args.tls_ca_file or args.tls_cert or args.tls_key else "tcp"
    try:
        address = scheduler_address(f"{scheme}://{args.host}:{args.port}")
    except ValueError as error:
        raise ConfigError(f"scheduler: {args.host}:{args.port} is {error}") from None
    tls = security(address, args.tls_ca_file, args.tls_cert, args.tls_key, where="--tls-ca-file, --tls-cert and --tls-key")
    dask.config.set({"distributed.diagnostics.nvml": False})

    async def run() -> None:
        async with Scheduler(host=args.host, port=args.port, protocol=scheme, security=tls, dashboard=False) as scheduler:
            print(
                f"ragsweep scheduler at {scheduler.address}: start boxes with `python src/benchmark.py worker {scheduler.address}`",
                flush=True,
            )
            await scheduler.finished()

    try:
        asyncio.run(run())
    except OSError as error:  # the port is taken, or the host is not this machine's
        raise BackendUnavailableError(f"scheduler: cannot listen on {args.host}:{args.port} ({error}) — pick another --port") from None
    except KeyboardInterrupt:
        pass
    return 0
