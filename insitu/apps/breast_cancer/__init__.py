"""The breast-cancer demo app: a standard Flower app directory shipped inside insitu.

The directory holds ``pyproject.toml`` (``[tool.flwr.app.components]`` and
``[tool.insitu] onnx-export``) and the app package ``bcw``; :mod:`.data` writes the demo's
per-site CSVs and computes the central baseline. Example::

    from insitu.flower import app_from_module, pack_app
    from insitu.apps.breast_cancer import central_baseline, write_site_csvs

    bundle = pack_app(app_from_module("insitu.apps.breast_cancer"))
    paths = write_site_csvs(tmp_dir, ["hospital-a", "hospital-b", "hospital-c"], seed=0)
    print(central_baseline(seed=0))
"""

from .data import DEFAULT_SITES, central_baseline, site_frames, write_site_csvs

__all__ = ["DEFAULT_SITES", "central_baseline", "site_frames", "write_site_csvs"]
