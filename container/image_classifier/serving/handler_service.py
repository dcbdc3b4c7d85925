"""The MMS handler module. MMS requires exactly one class here (and no other class)."""
import errno
import logging

from sagemaker_inference.default_handler_service import DefaultHandlerService

from ..artifact import ArtifactError
from ..errors import described, first_line
from . import environment, model_state
from .transformer import ImageTransformer


class HandlerService(DefaultHandlerService):
    """initialize() loads the model in the worker before MMS sends it requests.

    MMS logs and swallows an exception from initialize(): the worker stays up and the transformer
    retries the load per request, answering each with a JSON 500 that names the reason. That is
    what a multi-model endpoint needs (one broken model must not take the worker down). The outcome
    is also reported to `serve` (model_state): for a single model it stops if the load failed; on a
    multi-model endpoint POST /models answers with it.
    """

    def __init__(self):
        super().__init__(transformer=ImageTransformer())

    def initialize(self, context):
        model = context.model_name if environment.multi_model() else None
        try:
            super().initialize(context)
        except Exception as e:
            logging.getLogger(__name__).exception("model in %s failed to load",
                                                  context.system_properties.get("model_dir"))
            model_state.report_failed(first_line(e) if isinstance(e, ArtifactError) else described(e), model, cause(e))
            return
        model_state.report_loaded(model)


def cause(e: Exception) -> str:
    """What kind of failure: the artifact's, the machine's (memory or disk: SageMaker's 507), or other."""
    if isinstance(e, ArtifactError):
        return model_state.ARTIFACT
    if isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno == errno.ENOSPC) \
            or "out of memory" in str(e).lower():
        return model_state.RESOURCES
    return model_state.OTHER
