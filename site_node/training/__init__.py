"""The site's training runtime: registered datasets, the epsilon ledger, and the
supervised worker that runs each job's Flower ClientApp outside the daemon.

Example::

    from site_node.training import ClientAppRunner, build_node_config, load_datasets, open_ledger

    registry = load_datasets(site_dir)
    dataset = registry.validate("bcw")
    ledger = open_ledger(site_dir, registry)
    ledger.reserve("bcw", job_id, 2.0)                  # DP jobs: before training starts
    runner = ClientAppRunner(layout.directory, layout.clientapp,
                             build_node_config(0, 3, dataset.name, dataset.path),
                             run_id, node_id, run_config=run_config, on_message=audit)
    reply = runner.handle(task_bytes)                   # Flower Message proto in and out
"""

from site_node.training.datasets import (
    DATASETS_FILE,
    DatasetRegistry,
    RegisteredDataset,
    load_datasets,
)
from site_node.training.ledger import LEDGER_FILE, LedgerEntry, PrivacyLedger, open_ledger
from site_node.training.runner import (
    ALLOWED_CATEGORIES,
    AuditCallback,
    ClientAppRunner,
    build_node_config,
    error_reply,
    message_type_allowed,
)

__all__ = [
    "ALLOWED_CATEGORIES",
    "DATASETS_FILE",
    "LEDGER_FILE",
    "AuditCallback",
    "ClientAppRunner",
    "DatasetRegistry",
    "LedgerEntry",
    "PrivacyLedger",
    "RegisteredDataset",
    "build_node_config",
    "error_reply",
    "load_datasets",
    "message_type_allowed",
    "open_ledger",
]
