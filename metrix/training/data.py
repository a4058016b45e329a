"""The data a training run uses: the user's folder (with or without labels), the marks a server
kept for it, a benchmark, or the built-in synthetic set."""

from __future__ import annotations

from ..datasets.base import RetrievalData, keep_per_class
from .config import TrainConfig


def load_training_data(config: TrainConfig, log=print) -> RetrievalData:
    data = _load(config, log)
    if config.train_images_per_class is not None and data.labelled:
        before = len(data.train)
        data.train = keep_per_class(data.train, config.train_images_per_class, config.seed)
        log(
            f"kept {len(data.train)} of {before} training images: at most {config.train_images_per_class} "
            f"of each of the {len(data.train.classes)} training classes (drawn with seed {config.seed}); "
            "validation and test classes whole"
        )
    return data


def _load(config: TrainConfig, log) -> RetrievalData:
    from ..datasets.folder import load_data, load_image_folder
    from ..datasets.synthetic import SYNTHETIC_DEFAULTS, default_synthetic_root, generate_synthetic
    from ..datasets.unlabelled import load_unlabelled
    from .feedback import load_feedback

    if config.feedback is not None:
        return load_feedback(config.feedback, config.data, config.val_fraction)
    if config.unlabelled:
        return load_unlabelled(
            config.data, config.dataset, config.data_root, config.train_classes, config.split_file, config.val_fraction
        )

    if config.data is None and config.dataset is None:
        params = {
            "num_classes": config.synthetic_classes or SYNTHETIC_DEFAULTS["num_classes"],
            "images_per_class": config.synthetic_images_per_class or SYNTHETIC_DEFAULTS["images_per_class"],
            "image_size": config.synthetic_image_size or SYNTHETIC_DEFAULTS["image_size"],
        }
        root = default_synthetic_root(**params)
        log(f"no data given: using the built-in synthetic dataset in {root}")
        generate_synthetic(root, **params)
        if config.image_size is None:
            config.image_size = params["image_size"]
        data = load_image_folder(root, train_classes=config.train_classes, val_fraction=config.val_fraction)
        data.name = "synthetic"
        return data
    return load_data(
        data=config.data,
        dataset=config.dataset,
        data_root=config.data_root,
        train_classes=config.train_classes,
        split_file=config.split_file,
        val_fraction=config.val_fraction,
    )
