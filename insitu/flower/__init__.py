"""Flower, used as a library: app bundles (hashing, safe unpacking, loading) and strategy
observation. Shared by the SDK, the coordinator and the site.

Example::

    from insitu.flower import app_from_module, code_hash, pack_app, unpack_app

    bundle = pack_app(app_from_module("insitu.apps.breast_cancer"))   # SDK side
    digest = code_hash(bundle)                                          # what sites approve
    layout = unpack_app(bundle, job_dir / "app")                        # site side
    client_app = load_component(layout.directory, layout.clientapp)
"""

from insitu.flower.bundle import (
    MAX_BUNDLE_BYTES,
    MAX_FILES,
    MAX_TOTAL_BYTES,
    AppLayout,
    app_from_module,
    code_hash,
    load_component,
    pack_app,
    read_app,
    unpack_app,
)
from insitu.flower.observe import RoundEvent, observe_strategies

__all__ = [
    "MAX_BUNDLE_BYTES",
    "MAX_FILES",
    "MAX_TOTAL_BYTES",
    "AppLayout",
    "RoundEvent",
    "app_from_module",
    "code_hash",
    "load_component",
    "observe_strategies",
    "pack_app",
    "read_app",
    "unpack_app",
]
