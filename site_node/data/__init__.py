"""Site-local data: dataset connectors (CSV/Parquet), the synthetic generator, canaries.

Example::

    from site_node.data import dataset_specs, load_dataset, generate_patients, write_dataset

    write_dataset(generate_patients(569, seed=1), site_dir / "data/patients.csv", "csv")
    specs = dataset_specs(config["datasets"], base_dir=site_dir)
    ds = load_dataset(specs["breast-cancer-patients"])   # frame, policy, fingerprint
"""

from site_node.data.canary import canary_forms, find_canaries, make_canaries, plant_canaries
from site_node.data.connectors import (
    FORMATS,
    Dataset,
    DatasetSpec,
    dataset_specs,
    fingerprint_bytes,
    fingerprint_file,
    load_dataset,
    write_dataset,
)
from site_node.data.synthetic import (
    FEATURE_COLUMNS,
    IDENTIFIER_COLUMNS,
    PATIENT_COLUMNS,
    TRANSACTION_COLUMNS,
    generate_patients,
    generate_transactions,
    luhn_check_digit,
    split_label_skew,
    split_vertical,
)

__all__ = [
    "FEATURE_COLUMNS",
    "FORMATS",
    "IDENTIFIER_COLUMNS",
    "PATIENT_COLUMNS",
    "TRANSACTION_COLUMNS",
    "Dataset",
    "DatasetSpec",
    "canary_forms",
    "dataset_specs",
    "find_canaries",
    "fingerprint_bytes",
    "fingerprint_file",
    "generate_patients",
    "generate_transactions",
    "load_dataset",
    "luhn_check_digit",
    "make_canaries",
    "plant_canaries",
    "split_label_skew",
    "split_vertical",
    "write_dataset",
]
