"""A Predictor that sends image bytes and reads the JSON answer."""
from __future__ import annotations


def image_predictor_class():
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer

    class ImagePredictor(Predictor):
        def __init__(self, endpoint_name, sagemaker_session=None, **kwargs):
            kwargs.setdefault("serializer", IdentitySerializer(content_type="image/jpeg"))
            kwargs.setdefault("deserializer", JSONDeserializer())
            super().__init__(endpoint_name, sagemaker_session=sagemaker_session, **kwargs)

    return ImagePredictor
