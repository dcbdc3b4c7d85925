"""Request workflow under MMS: sagemaker-inference's Transformer with our handler functions,
per-request errors as JSON (never a traceback), and CustomAttributes passed through.
"""
from __future__ import annotations

import logging
from http import HTTPStatus

from sagemaker_inference.errors import BaseInferenceToolkitError
from sagemaker_inference.transformer import Transformer

from ..errors import first_line
from . import environment, inference, worker_deadlines
from .responses import error_body

log = logging.getLogger(__name__)

CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
REQUEST_ID = worker_deadlines.REQUEST_HEADER.lower()


def _header(headers: dict, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value.decode() if isinstance(value, (bytes, bytearray)) else value
    return None


class ImageTransformer(Transformer):
    def _validate_user_module_and_set_functions(self):
        # Always our functions: this image serves its own models, not user scripts.
        self._model_fn = inference.model_fn
        self._pre_model_fn = self._model_warmup_fn = None

    def transform(self, data, context):
        try:
            self.validate_and_initialize(model_dir=context.system_properties.get("model_dir"), context=context)
        except Exception as e:
            log.exception("model failed to load")
            reason = first_line(e)
            return self._fail_all(data, context, 500, f"model failed to load: {reason}")
        try:
            return self._answer(data, context)
        finally:
            worker_deadlines.clear()

    def _answer(self, data, context):
        # MMS hands us several requests at once with dynamic batching (SERVE_BATCH_SIZE): each is
        # decoded on its own (its errors are its own), then all are answered with one forward.
        # Each phase is announced with its deadline: past it, `serve` kills this worker.
        answers, decoded = [None] * len(data), {}
        ids = [_header(context.get_all_request_header(i), REQUEST_ID) or "" for i in range(len(data))]
        # Never past the model server's timeout, after which the front has answered the client.
        decode_seconds = min(environment.max_decode_seconds(), environment.model_server_timeout())
        for i, request in enumerate(data):
            headers = context.get_all_request_header(i)
            worker_deadlines.mark([ids[i]], worker_deadlines.DECODE, decode_seconds)
            try:
                accept = inference.answer_type(_header(headers, "accept"))  # 406 before any work
                options = inference.parse_options(_header(headers, CUSTOM_ATTRIBUTES))
                decoded[i] = accept, inference.input_fn(request.get("body") or b"", _header(headers, "content-type"),
                                                        options=options, model=self._model)
            except BaseInferenceToolkitError as e:
                answers[i] = self._fail(context, i, e.status_code, e.message)
            except Exception:
                log.exception("decoding a request failed")
                answers[i] = self._fail(context, i, 500, "prediction failed; see the endpoint's log")
        if not decoded:
            return answers
        worker_deadlines.mark([ids[i] for i in decoded], worker_deadlines.PREDICT, environment.model_server_timeout())
        try:
            predictions = inference.predict_many([batch for _, batch in decoded.values()], self._model)
        except Exception:
            log.exception("prediction failed")
            for i in decoded:
                answers[i] = self._fail(context, i, 500, "prediction failed; see the endpoint's log")
            return answers
        if len(decoded) > 1:
            log.info("%d requests answered with one forward of %d images", len(decoded),
                     sum(len(p.probabilities) for p in predictions))
        for (i, (accept, _)), prediction in zip(decoded.items(), predictions):
            answers[i], content_type = inference.output_fn(prediction, accept, model=self._model)
            context.set_response_content_type(i, content_type)
        return answers

    @staticmethod
    def _fail(context, idx: int, status: int, message: str) -> str:
        context.set_response_status(code=status, phrase=HTTPStatus(status).phrase, idx=idx)
        context.set_response_content_type(idx, inference.JSON_TYPE)
        return error_body(status, message)

    def _fail_all(self, data, context, status, message):
        return [self._fail(context, i, status, message) for i in range(len(data))]

