"""Flower apps that ship with insitu (each directory is a standard Flower app).

Example::

    from insitu.flower import app_from_module
    app_dir = app_from_module("insitu.apps.breast_cancer")
"""

__all__: list[str] = []
