"""The edge of the library: the modules that talk to Optuna, MLflow and matplotlib.

``import mtl_core`` and the training path (data, model, loss, ``fit``, metrics,
baselines) import none of these packages; only the modules here do:

- :mod:`~mtl_core.integrations.search`: the Optuna search;
- :mod:`~mtl_core.integrations.tracking`: MLflow runs, the registry and promotion;
- :mod:`~mtl_core.integrations.serving`: the MLflow pyfunc model;
- :mod:`~mtl_core.integrations.models`: a registry alias resolved to one version, and loaded;
- :mod:`~mtl_core.integrations.figures`: matplotlib figures for the parent run.

They live inside the package, not in ``flows/``, because the pyfunc model ships
``mtl_core`` as its code and must load without the flows; Prefect stays in ``flows/``.
"""
