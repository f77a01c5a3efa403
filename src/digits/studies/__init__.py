"""The studies' own logic: convexity, the MNIST network, the SVHN zoo."""
