"""The MMS handler module. MMS requires exactly one class here; helpers live elsewhere."""
import logging

from sagemaker_inference.default_handler_service import DefaultHandlerService

from ..artifact import ArtifactError
from . import model_state
from .mms import multi_model
from .transformer import ImageTransformer


class HandlerService(DefaultHandlerService):
    """initialize() loads the model in the worker before MMS sends it requests.

    MMS logs and swallows an exception from initialize(): the worker stays up and the transformer
    retries the load per request, answering each with a JSON 500 that names the reason. That is
    what a multi-model endpoint needs (one broken model must not take the worker down). A single
    model's outcome is also reported to `serve` (model_state), which stops if the load failed.
    """

    def __init__(self):
        super().__init__(transformer=ImageTransformer())

    def initialize(self, context):
        single_model = not multi_model()
        try:
            super().initialize(context)
        except Exception as e:  # noqa: BLE001
            logging.getLogger(__name__).exception("model in %s failed to load",
                                                  context.system_properties.get("model_dir"))
            if single_model:
                reason = (str(e).strip().splitlines() or [""])[0]
                model_state.report_failed(reason if isinstance(e, ArtifactError) else f"{type(e).__name__}: {reason}")
            return
        if single_model:
            model_state.report_loaded()
