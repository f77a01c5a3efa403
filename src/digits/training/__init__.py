"""The training loop, optimisers, checkpoints, augmentation and recipes."""
