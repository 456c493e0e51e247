"""Prefect flows around ``mtl_core``: the ``mtl-pipeline`` flow and the ``mtl`` command.

Importing this package first applies the embedded defaults (see
:mod:`flows.settings`), before Prefect reads its settings.
"""

from flows.settings import configure_environment

configure_environment()
