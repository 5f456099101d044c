"""Data: list files, image folders, the embedded MNIST long tail, splits, datasets, transforms.

The transforms live in :mod:`training.data.transforms` because ``training/presets/`` is the
package of YAML config presets.
"""

from training.data.dataset import ImageDataset, load_image
from training.data.errors import DataError
from training.data.folders import IMAGE_EXTENSIONS, is_image_file, list_images, scan_class_folders
from training.data.listfile import OPEN_LABEL, read_list, write_list
from training.data.loading import Split, load_split
from training.data.mnist import materialise_mnist, mnist_split_dir
from training.data.split import (
    BuiltSplit,
    SplitSpec,
    build_split,
    profile_counts,
    read_summary,
    shot_group,
    write_split,
)
from training.data.transforms import (
    EvalPreset,
    TrainPreset,
    eval_preprocess_params,
    eval_transform,
    train_transform,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "OPEN_LABEL",
    "BuiltSplit",
    "DataError",
    "EvalPreset",
    "ImageDataset",
    "Split",
    "SplitSpec",
    "TrainPreset",
    "build_split",
    "eval_preprocess_params",
    "eval_transform",
    "is_image_file",
    "list_images",
    "load_image",
    "load_split",
    "materialise_mnist",
    "mnist_split_dir",
    "profile_counts",
    "read_list",
    "read_summary",
    "scan_class_folders",
    "shot_group",
    "train_transform",
    "write_list",
    "write_split",
]
