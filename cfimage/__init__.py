"""cfimage: image classifiers that also learn from user behaviour.

Two worlds live in one process (see README, "Design"):
  * stage 1, the TFRS two-tower model, runs on Keras 2 (`tf_keras`), because
    tensorflow-recommenders 0.7.7 only imports with TF_USE_LEGACY_KERAS=1;
  * stage 2, the image model, runs on Keras 3 (`import keras`).
They exchange numpy arrays and files only. TF_USE_LEGACY_KERAS must be set
before TensorFlow is first imported, so it is set here, at package import.
"""

import os
import sys

if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# Quieten TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
