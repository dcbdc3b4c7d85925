"""The launch side: SageMaker SDK scripts and the same pipeline on one machine (--local).

It imports the image's package (`image_classifier`: hyperparameters, metrics, search space) for
what both sides share; `make venv` installs both packages into .venv (editable).
"""
