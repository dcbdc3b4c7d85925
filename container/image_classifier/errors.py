"""Errors that end a training job with a one-line reason for /opt/ml/output/failure."""


class TrainingError(Exception):
    """A problem with the job's input or settings; str(e) is the human reason, one line."""
