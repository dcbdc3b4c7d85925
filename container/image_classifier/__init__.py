"""Image classification for SageMaker: the package behind the image's `train` and `serve`.

Modules that the launch side imports (hyperparameters, metrics) must not import torch, so
that a laptop with only the SageMaker SDK can use them.
"""

__version__ = "0.1.0"
