"""Entry script of the pyfunc model (MLflow "models from code").

MLflow copies this file into the model and runs it at load time; the
``mtl_core`` package travels alongside as the model's code path.
"""

import mlflow.models

from mtl_core.integrations.serving import MultiTaskPyfunc

mlflow.models.set_model(MultiTaskPyfunc())
