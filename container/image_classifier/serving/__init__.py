"""Serving: our handler functions under sagemaker-inference + multi-model-server (MMS)."""
