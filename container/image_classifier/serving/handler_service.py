"""The MMS handler module. MMS requires exactly one class here; helpers live elsewhere."""
from sagemaker_inference.default_handler_service import DefaultHandlerService

from .transformer import ImageTransformer


class HandlerService(DefaultHandlerService):
    """initialize() loads the model in the worker before MMS marks it ready."""

    def __init__(self):
        super().__init__(transformer=ImageTransformer())
