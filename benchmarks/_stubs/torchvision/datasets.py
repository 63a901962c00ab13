"""Stub (see the package docstring)."""


class VisionDataset:
    pass


class CIFAR10(VisionDataset):
    pass
