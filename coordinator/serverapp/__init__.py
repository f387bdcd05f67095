"""A job's ServerApp, run out of the coordinator's process, in a sandbox.

The coordinator holds the Vault token and keys; submitted code never runs beside them.
:func:`run_serverapp_sandboxed` starts ``python -m coordinator.serverapp.worker`` in a
bubblewrap sandbox (no network, no keys, no data directory: only the job's app) and
serves the worker's Grid calls from the job's :class:`coordinator.flower_grid.SessionGrid`
over the worker's pipes. The worker returns the strategy's final arrays and the ONNX
export; the coordinator checks, signs and registers them.

Example::

    outcome = run_serverapp_sandboxed(layout, grid, run_config, run_id=job.run_id,
                                      launcher=launcher, audit=audit, log_path=log)
    outcome.arrays, outcome.onnx
"""

from coordinator.serverapp.host import (
    MAX_LOG_BYTES,
    ServerAppCancelled,
    ServerAppOutcome,
    run_serverapp_sandboxed,
)

__all__ = ["MAX_LOG_BYTES", "ServerAppCancelled", "ServerAppOutcome", "run_serverapp_sandboxed"]
