"""The MMS handler module. MMS requires exactly one class here; helpers live elsewhere."""
import logging
import os

from sagemaker_inference.default_handler_service import DefaultHandlerService

from .transformer import ImageTransformer


class HandlerService(DefaultHandlerService):
    """initialize() loads the model in the worker before MMS marks it ready.

    On a multi-model endpoint a model that fails to load must not take the worker into a
    crash-restart loop: the worker stays up and answers that model's requests with a JSON 500
    naming the reason (the transformer retries the load per request and reports it).
    """

    def __init__(self):
        super().__init__(transformer=ImageTransformer())

    def initialize(self, context):
        try:
            super().initialize(context)
        except Exception:  # noqa: BLE001
            if os.environ.get("SAGEMAKER_MULTI_MODEL", "false").lower() != "true":
                raise  # single model: `serve` checked it before start; fail loudly
            logging.getLogger(__name__).exception("model in %s failed to load",
                                                  context.system_properties.get("model_dir"))
