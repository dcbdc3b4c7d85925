"""Errors that end a training job with a one-line reason for /opt/ml/output/failure."""


class TrainingError(Exception):
    """A problem with the job's input or settings; str(e) is the human reason, one line."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty:
    what a one-line reason quotes (never raises, so it is safe inside an `except`)."""
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def described(error: BaseException) -> str:
    """'KeyError: 'x'' (the type and first_line), or 'KeyError' for an empty message."""
    line = first_line(error)
    return line if line == type(error).__name__ else f"{type(error).__name__}: {line}"
