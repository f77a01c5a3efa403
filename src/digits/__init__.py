"""digits: a reproducible study of digit classification on MNIST and SVHN."""

__version__ = "0.1.0"
