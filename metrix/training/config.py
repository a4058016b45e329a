"""Training configuration: defaults, named recipes, a config file, then command-line flags, each
overriding the one before. The resolved config is saved in every run and checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import tomllib

from ..datasets.base import DEFAULT_VAL_FRACTION


class ConfigError(ValueError):
    """A configuration the trainer cannot use; the message is one line."""


@dataclass
class TrainConfig:
    # Data: an ImageFolder (`data`), a benchmark (`dataset` + `data_root`), or neither: the
    # built-in synthetic dataset generated with the synthetic_* parameters.
    data: str | None = None
    dataset: str | None = None
    data_root: str | None = None
    train_classes: str | None = None
    split_file: str | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    # Keep N images of each training class (drawn with the run's seed, so runs of one seed share
    # them), the validation and test classes whole: a small folder made from a large one.
    train_images_per_class: int | None = None
    # An index folder a server kept marked queries in: train on those marks, the classes a query
    # and its right-marked images of `data` (the gallery the index holds) make (docs/feedback.md).
    feedback: str | None = None
    # folder: one sub-folder per class. Without labels (docs/unlabelled.md): instances (each image
    # its own class, its augmented views the positives), clusters (k-means pseudo-labels of the
    # current embeddings, redrawn every recluster_every epochs), or none: the one measured best.
    labels: str = "folder"
    clusters: int | None = None  # labels=clusters: k (None: one cluster per IMAGES_PER_CLUSTER images)
    recluster_every: int = 2
    synthetic_classes: int | None = None
    synthetic_images_per_class: int | None = None
    synthetic_image_size: int | None = None
    # Model
    backbone: str = "efficientnet_lite0"  # a registered name, or timm:NAME (docs/backbones.md)
    pretrained: bool = True
    weights: str | None = None  # a timm backbone's pretrained weights from this file, not the hub
    embedding_size: int | None = 512  # None: the backbone's feature width (what a PCA head rotates)
    image_size: int | None = None  # None: the backbone's own (or the synthetic images' size)
    train_stages: int | None = None  # train only the last N backbone stages (None: all)
    cached_views: int = 0  # > 0: cache the frozen stages' outputs for this many augmented views
    # Random left-right flips in the training augmentation. None: decided from the data before
    # training (metrix.training.flip_check: off where mirror images look like other classes);
    # the run's config.json keeps the decision.
    flip: bool | None = None
    head_init: str = "random"  # random | pca (the pooled pretrained features' principal directions)
    # Loss and Metrix
    loss: str = "ms"
    ms_preset: str = "pml"
    mixup: str = "feature"
    mixup_alpha: float = 2.0
    mixup_weight: float = 0.4
    negatives_per_anchor: int | str | None = "auto"  # None: every negative of the anchor
    pair_choice: str = "all"  # all | coin (metrix.mixup.PAIR_CHOICES)
    # The official code's departures (docs/metrix.md, "The official code's variant"): the contrastive
    # mixed term averaged over its non-zero terms (mean | nonzero), and a weight of its own for the
    # embed mode's anchor-negative steps (None: mixup_weight; needs pair_choice coin).
    mixed_reduction: str = "mean"
    embed_anchor_negative_weight: float | None = None
    # Optimisation
    epochs: int = 10
    batch_size: int = 100
    samples_per_class: int = 5
    sampler: str = "balanced"  # balanced (P classes x K images) | random (the paper's for CUB and Cars)
    optimizer: str = "adamw"  # adamw (decoupled weight decay) | adam (L2 decay, the official code's)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 1  # epochs that train only the head (and proxies)
    freeze_bn: bool = True
    grad_clip: float = 10.0
    grad_clip_mode: str = "norm"  # norm (the gradients' total norm) | value (each element, the official code's)
    lr_schedule: str = "cosine"  # cosine | step | none
    lr_step_epochs: int = 20
    lr_gamma: float = 0.5
    # Run
    seed: int = 0
    num_workers: int = 2
    channels_last: bool = True
    decode_once: bool = False  # keep the training images decoded in memory (metrix.training.decoded_images)
    precision: str = "fp32"  # fp32 | bf16 (autocast of the backbone's forward; the head and loss stay fp32)
    train_retrieval: bool = False  # also measure retrieval on as many training classes as validation has
    # Also measure the test classes every epoch (logged as test_*), for reporting the official code's
    # best-epoch-on-test protocol beside ours. Never used to choose a checkpoint, a default or a setting.
    record_test: bool = False
    log: str | None = None  # tensorboard: each epoch's record also as TensorBoard scalars (RUN/tensorboard)
    device: str = "auto"
    out: str | None = None
    recipe: str = "full"

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def unlabelled(self) -> bool:
        return self.labels != "folder"

    def frozen_stages(self, num_stages: int) -> int:
        """How many of the backbone's first stages never train."""
        return 0 if self.train_stages is None else max(0, num_stages - self.train_stages)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        return cls(**_known(values, "config"))

    def validate(self) -> None:
        from ..losses import LOSSES
        from ..mixup import MIXUP_MODES, PAIR_CHOICES
        from .sampler import SAMPLERS
        from .tensorboard_log import tensorboard_missing

        if (self.data is not None) + (self.dataset is not None) > 1:
            raise ConfigError("give either --data DIR (an image folder) or --dataset NAME, not both")
        if self.dataset is not None and self.data_root is None:
            raise ConfigError(f"--dataset {self.dataset} needs --data-root DIR, the folder it was downloaded to")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.loss == "pml-ms" and self.mixup != "none":
            raise ConfigError("loss pml-ms (the pytorch-metric-learning peer) has no Metrix form; use --mixup none")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.pair_choice not in PAIR_CHOICES:
            raise ConfigError(f"unknown pair choice {self.pair_choice!r}; choose one of {', '.join(PAIR_CHOICES)}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"unknown precision {self.precision!r}; choose fp32 or bf16")
        if self.mixup not in MIXUP_MODES:
            raise ConfigError(f"unknown mixup {self.mixup!r}; choose one of {', '.join(MIXUP_MODES)}")
        if self.optimizer not in ("adamw", "adam"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose adamw or adam")
        if self.grad_clip_mode not in ("norm", "value"):
            raise ConfigError(f"unknown grad-clip mode {self.grad_clip_mode!r}; choose norm or value")
        if self.mixed_reduction not in ("mean", "nonzero"):
            raise ConfigError(f"unknown mixed reduction {self.mixed_reduction!r}; choose mean or nonzero")
        if self.embed_anchor_negative_weight is not None and self.pair_choice != "coin":
            raise ConfigError(
                "embed-anchor-negative-weight weighs the anchor-negative steps of pair choice coin; "
                "set pair-choice coin"
            )
        if self.log not in (None, "tensorboard"):
            raise ConfigError(f"unknown log {self.log!r}; choose tensorboard (metrics.jsonl is always written)")
        if self.log == "tensorboard" and (missing := tensorboard_missing()):
            raise ConfigError(missing)
        if self.lr_schedule not in ("cosine", "step", "none"):
            raise ConfigError(f"unknown lr schedule {self.lr_schedule!r}; choose cosine, step or none")
        for name in ("epochs", "batch_size", "embedding_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_epochs:
            raise ConfigError(f"warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if self.train_images_per_class is not None:
            if self.train_images_per_class < 2:
                raise ConfigError(
                    f"train-images-per-class must be at least 2 (a class of one has no positive), "
                    f"got {self.train_images_per_class}"
                )
            if self.unlabelled:
                raise ConfigError("train-images-per-class keeps images of each class; it needs --labels folder")
        if self.head_init not in ("random", "pca"):
            raise ConfigError(f"unknown head init {self.head_init!r}; choose random or pca")
        if self.train_stages is not None and self.train_stages < 1:
            raise ConfigError(f"train-stages must be at least 1, got {self.train_stages}")
        if self.cached_views and self.train_stages is None:
            raise ConfigError("cached-views needs train-stages: only frozen stages can be cached")
        if self.feedback is not None and (self.data is None or self.unlabelled or self.train_images_per_class):
            raise ConfigError(
                "--feedback INDEX trains on the marks kept in INDEX: give --data GALLERY (the folder it indexes), "
                "without --labels none or --train-images-per-class"
            )
        if self.labels not in LABELS:
            raise ConfigError(f"unknown labels {self.labels!r}; choose one of {', '.join(LABELS)}")
        if self.unlabelled:
            if self.loss in ("pa", "pml-ms"):
                raise ConfigError(f"loss {self.loss} needs classes; training without labels uses ms or contrastive")
            if self.sampler != "balanced":
                raise ConfigError(
                    "training without labels needs --sampler balanced (K views or members of each instance or cluster)"
                )
            if self.clusters is not None and self.clusters < 2:
                raise ConfigError(f"clusters must be at least 2, got {self.clusters}")
            if self.recluster_every < 1:
                raise ConfigError(f"recluster-every must be at least 1, got {self.recluster_every}")
        if self.cached_views and self.mixup == "input":
            raise ConfigError(
                "input mixing needs pixels, but cached-views trains on cached features; use feature or embed"
            )


#: --labels: the folder's classes, or one of the ways to train without labels; "none" resolves to
#: UNLABELLED_DEFAULT, the way measured best (docs/benchmarks.md, issue 17).
LABELS = ("folder", "none", "instances", "clusters")
UNLABELLED_DEFAULT = "clusters"
#: Settings of each way without labels, between the recipe's and the user's: two views of each image
#: in a batch (more instances per batch, as contrastive self-supervision does).
UNLABELLED_SETTINGS = {"instances": dict(samples_per_class=2), "clusters": {}}
IMAGES_PER_CLUSTER = 20


#: The official code's optimisation (billpsomas/metrix): Adam with L2 weight decay, each gradient
#: element clipped at 10, the learning rate divided by 10 every 10 epochs, random batches for CUB
#: and Cars, and one kind of Metrix pair per step (a coin flip).
OFFICIAL_OPTIMISATION = dict(
    optimizer="adam",
    weight_decay=1e-4,
    grad_clip=10.0,
    grad_clip_mode="value",
    lr_schedule="step",
    lr_step_epochs=10,
    lr_gamma=0.1,
    sampler="random",
    pair_choice="coin",
)
#: The official code's Metrix: every negative of the anchor, the contrastive mixed term averaged
#: over its non-zero terms, 0.3 on the embed anchor-negative steps, its MS values and miner.
OFFICIAL_MIXING = dict(
    negatives_per_anchor=None, mixed_reduction="nonzero", embed_anchor_negative_weight=0.3, ms_preset="metrix-code"
)
#: The whole network of EfficientNet-Lite0 training at 96 px on two CPU cores (the full-cpu recipe's
#: model, data and epochs; metrix-code runs the official code's variant on the same).
FULL_CPU = dict(
    backbone="efficientnet_lite0",
    image_size=96,
    embedding_size=512,
    decode_once=True,
    lr=1e-4,
    epochs=20,
    warmup_epochs=1,
    freeze_bn=True,
    batch_size=100,
    samples_per_class=5,
    train_retrieval=True,
)
#: Benchmarks the paper (and the official code) trains on balanced batches of 5 images per class.
BALANCED_BATCH_DATASETS = ("sop", "inshop")

#: Named settings. "full" trains the whole backbone with the defaults above; "paper" is the ICLR
#: 2022 protocol (METRIX.md section 3) with the official code's optimisation; both are GPU recipes.
#: Without a GPU, "cpu" is the default.
RECIPES: dict[str, dict] = {
    "full": {},
    "paper": dict(
        backbone="resnet50",
        embedding_size=512,
        image_size=224,
        batch_size=100,
        samples_per_class=5,
        lr=1e-4,
        freeze_bn=True,
        warmup_epochs=5,
        epochs=60,
        **OFFICIAL_OPTIMISATION,
    ),
    # Two CPU cores: EfficientNet-Lite0 at 160 px; the stem and first five block stages frozen and
    # cached for 5 augmented views; the last two block stages, the head convolution and a
    # PCA-initialised head as wide as the pooled features (1280-d for Lite0: a rotation, so it
    # starts at the floor) train
    # at a low rate (docs/training.md, "The CPU recipe"). No mixing: in both CPU recipes it
    # measured best on the validation classes (docs/benchmarks.md, issues 4 and 13).
    "cpu": dict(
        backbone="efficientnet_lite0",
        image_size=160,
        train_stages=3,
        cached_views=5,
        head_init="pca",
        embedding_size=None,
        mixup="none",
        lr=3e-5,
        epochs=10,
        warmup_epochs=0,
        freeze_bn=True,
        batch_size=100,
        samples_per_class=5,
        lr_schedule="cosine",
    ),
    # Two CPU cores, the whole network trains (docs/training.md, "The full CPU recipe"):
    # EfficientNet-Lite0 at 96 px, the training images decoded once, a fresh random crop and flip
    # every epoch, one head-only warm-up epoch, the best epoch chosen on the validation classes.
    "full-cpu": dict(**FULL_CPU, mixup="none", lr_schedule="cosine"),
    # The official code's variant of Metrix and its optimisation (docs/metrix.md) on the full-cpu
    # backbone, input size and epochs. Mixing feature, the official code's default.
    "metrix-code": dict(**FULL_CPU, mixup="feature", **OFFICIAL_MIXING, **OFFICIAL_OPTIMISATION),
}


def resolve_config(config_file: str | Path | None = None, **flags) -> TrainConfig:
    """defaults < recipe < config file < flags (flags that are None were not given)."""
    values: dict = {}
    from_file = read_config_file(config_file) if config_file else {}
    recipe = flags.pop("recipe", None) or from_file.get("recipe") or default_recipe()
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    values.update(RECIPES[recipe])
    dataset = flags.get("dataset") or from_file.get("dataset")
    if values.get("sampler") == "random" and dataset in BALANCED_BATCH_DATASETS:
        values["sampler"] = "balanced"
    labels = flags.get("labels") or from_file.get("labels") or "folder"
    labels = UNLABELLED_DEFAULT if labels == "none" else labels
    values.update(UNLABELLED_SETTINGS.get(labels, {}))
    values.update(from_file)
    values.update({k: v for k, v in flags.items() if v is not None})
    values["recipe"], values["labels"] = recipe, labels
    config = TrainConfig.from_dict(values)
    config.validate()
    return config


#: Why each recipe exists, in one line (docs/training.md and docs/benchmarks.md have the evidence).
RECIPE_NOTES = {
    "cpu": "frozen early stages cached for 5 views, the tail trains: about 5 min for cub100 on two cores, "
    "the best validation result on photos (use full-cpu for images far from ImageNet)",
    "full-cpu": "the whole network trains on fresh augmentations at 96 px: about 9 min for cub100 on two cores, "
    "the best validation result on handwriting, below cpu on photos",
    "full": "the whole backbone trains at its own input size: the GPU recipe",
    "paper": "the ICLR 2022 protocol with ResNet-50: a GPU recipe",
    "metrix-code": "the official code's variant of Metrix and its optimisation on the full-cpu backbone: "
    "for comparison with the paper (docs/metrix.md)",
}


def explain_choices(config: TrainConfig, given: set[str]) -> str:
    """The first line `metrix train` prints: which recipe and mixing run, and why. `given`: the
    settings given by flags or a config file."""
    import torch

    if "recipe" in given:
        why_recipe = "asked for"
    else:
        why_recipe = f"the default {'with' if torch.cuda.is_available() else 'without'} a GPU"
    recipe_mixup = {**asdict(TrainConfig()), **RECIPES[config.recipe]}["mixup"]
    if "mixup" in given or config.mixup != recipe_mixup:
        why_mixup = "asked for"
    elif recipe_mixup == "none":
        why_mixup = "the recipe's default: no mixing measured best on the validation classes"
    else:
        why_mixup = "the recipe's default: the paper's claim, untested by this project (docs/benchmarks.md)"
    return f"recipe {config.recipe} ({why_recipe}: {RECIPE_NOTES[config.recipe]}); mixing {config.mixup} ({why_mixup})"


def default_recipe() -> str:
    """ "full" where a GPU is present, else "cpu" (training every stage at full size is several
    times slower per epoch on two CPU cores, and the cpu recipe is the one measured there)."""
    import torch

    return "full" if torch.cuda.is_available() else "cpu"


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text()
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(
            f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {error}"
        ) from None
    return _known(values, f"config file {path}")


def _known(values: dict, where: str) -> dict:
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where} has unknown setting(s): {', '.join(unknown)}")
    return values
