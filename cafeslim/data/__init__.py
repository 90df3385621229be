"""Datasets and loaders: ImageNet-layout folders, the built-in demo digits, timm preprocessing."""

from .folders import FolderSplit, ImageFolder, scan_imagenet, scan_split
from .loaders import DEMO, Data, ResumableSampler, build_data, dataset_classes, split_val
from .transforms import build_transforms, data_config

__all__ = ["DEMO", "Data", "FolderSplit", "ImageFolder", "ResumableSampler", "build_data",
           "build_transforms", "data_config", "dataset_classes", "scan_imagenet", "scan_split",
           "split_val"]
