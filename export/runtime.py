"""Running an exported Metrix model without PyTorch: an onnxruntime session tuned for the CPU,
the model's own description (ONNX metadata) and the preprocessing that matches it.

    embedder = load_embedder("model.onnx")
    vectors = embedder.embed_images([open_rgb("query.jpg")])   # [1, D] float32, L2-normalised

The graph takes uint8 RGB images, NHWC, at `metadata.image_size`; the client only decodes,
resizes the short side and centre-crops (`preprocess`), exactly as evaluation does in PyTorch.
Models exported since "why this match" also give each location's embedding (`embed_with_cells`).
The indexer and the app both embed through here, so a query and the gallery meet the same graph.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

#: Written into every exported model; a reader refuses formats it does not know.
FORMAT = "metrix-onnx/1"
INPUT_NAME, OUTPUT_NAME, CELLS_NAME = "images", "embeddings", "cells"
_RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class ModelError(ValueError):
    """An exported model that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported model says about itself (ONNX metadata_props, one key per field)."""

    image_size: int
    resize_size: int
    interpolation: str
    embedding_size: int
    backbone: str
    loss: str
    mixup: str
    training_data: str
    train_classes: int
    weights_sha256: str
    metrix_version: str
    checkpoint: str = ""
    quantization: str = "none"
    format: str = FORMAT
    input_layout: str = "NHWC uint8 RGB"
    exporter: str = ""
    opset: int = 0
    labels: str = "folder"  # what the model trained with: folder (classes), instances, clusters; "" untrained
    flip: bool | None = None  # whether training flipped images left to right; None untrained
    int8: dict | None = None  # an int8 model's form and check (export/quantize.py int8_record)
    floor_check: dict | None = None  # the run's comparison with no training (metrix.evaluation.card)

    @property
    def training_path(self) -> str:
        """floor (no training), without labels, or with labels."""
        if self.loss == "none":
            return "floor"
        return "without labels" if self.labels in ("instances", "clusters") else "with labels"

    @property
    def provenance(self) -> str:
        """Which path the model took, in words (the UI and /api/info say it)."""
        if self.training_path == "floor":
            weights = "random-weight" if "random" in self.training_data else "pretrained"
            return f"the {weights} {self.backbone} with no training (the floor)"
        if self.training_path == "without labels":
            how = "each image its own class" if self.labels == "instances" else "k-means pseudo-labels"
            return f"trained without labels ({how}) on {self.training_data}"
        trained = f"trained with labels: {self.train_classes} classes of {self.training_data}"
        difference = (self.floor_check or {}).get("difference", {}).get("map_at_r")
        if difference:
            verdict = {"better": "better than", "worse": "WORSE than", "tied": "not told apart from"}
            trained += (
                f"; {verdict[self.floor_check['verdict']]} no training on its validation classes (MAP@R "
                f"{difference['mean']:+.2f} [{difference['low']:+.2f}, {difference['high']:+.2f}])"
            )
        return trained

    @property
    def resize_policy(self) -> str:
        return (
            f"resize the short side to {self.resize_size} px ({self.interpolation}), "
            f"centre-crop {self.image_size}x{self.image_size}"
        )

    def to_props(self) -> dict[str, str]:
        return {f"metrix.{key}": json.dumps(value) for key, value in asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: Path | str) -> "ModelMetadata":
        values = {key.removeprefix("metrix."): value for key, value in props.items() if key.startswith("metrix.")}
        if not values:
            raise ModelError(f"{source}: not a Metrix model (no metrix.* metadata); export it with `metrix export`")
        fmt = json.loads(values.get("format", '""'))
        if fmt != FORMAT:
            raise ModelError(
                f"{source}: model format {fmt!r} is not {FORMAT!r}; re-export it with this version of metrix"
            )
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{key: json.loads(value) for key, value in values.items() if key in known})
        except (TypeError, ValueError) as error:
            raise ModelError(f"{source}: incomplete Metrix metadata ({error})") from None


def preprocess(image: Image.Image, metadata: ModelMetadata) -> np.ndarray:
    """An RGB PIL image -> uint8 [image_size, image_size, 3]: torchvision's Resize(short side) +
    CenterCrop with the same rounding, so the exported model sees what evaluation saw."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = metadata.resize_size, int(metadata.resize_size * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    if size != image.size:
        image = image.resize(size, _RESAMPLING[metadata.interpolation])
    crop = metadata.image_size
    left = int(round((size[0] - crop) / 2.0))
    top = int(round((size[1] - crop) / 2.0))
    return np.asarray(image.crop((left, top, left + crop, top + crop)).convert("RGB"), dtype=np.uint8)


def load_for_model(
    path: Path | str, metadata: ModelMetadata, data: bytes | None = None, box=None
) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file (or only its region `box`, metrix.images.Box) -> (the model's uint8 input,
    (width, height) of the original image). Raises metrix.images.ImageDecodeError naming the file."""
    from metrix.images import decode_rgb

    image, size = decode_rgb(path, data, min_short_side=metadata.resize_size, box=box)
    return preprocess(image, metadata), size


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def session_options(threads: int | None = None, reference: bool = False):
    """CPU settings made explicit: all graph optimisations, `threads` intra-op threads (default:
    the cores this process may use), one inter-op thread (the graph is a chain). `reference`: no
    graph optimisation, so an int8 model's QuantizeLinear/DequantizeLinear pairs run as written
    around float operators instead of being fused into integer kernels: the model's definition,
    which no CPU's integer arithmetic can change (slower; export/quantize.py checks against it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL if reference else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


@dataclass
class Embedder:
    """A loaded model: `session` (onnxruntime), `metadata`, and the matching preprocessing."""

    path: Path
    session: object
    metadata: ModelMetadata

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, self.metadata)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [B, S, S, 3] -> float32 [B, D], L2-normalised."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    @property
    def has_cells(self) -> bool:
        return CELLS_NAME in {output.name for output in self.session.get_outputs()}

    def embed_with_cells(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [B, S, S, 3] -> (embeddings [B, D], cell embeddings [B, h, w, D]), both L2-normalised."""
        if not self.has_cells:
            raise ModelError(
                f"{self.path}: exported before models had a cells output; re-export it with `metrix export`"
            )
        embeddings, cells = self.session.run([OUTPUT_NAME, CELLS_NAME], {INPUT_NAME: batch})
        return embeddings, cells

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.embed(np.stack([self.preprocess(image) for image in images]))


def read_metadata(path: Path | str) -> ModelMetadata:
    """The metadata of an exported model, without building a session (weights are not loaded)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError, OSError, ... for a bad file
        raise ModelError(
            f"{path}: cannot read the ONNX model ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        ) from None
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, path)


def load_embedder(path: Path | str, threads: int | None = None, gpu: bool = False, reference: bool = False) -> Embedder:
    """`gpu`: run on CUDA where this onnxruntime build has the provider (onnxruntime-gpu), else the
    CPU. `reference`: the graph as written (session_options)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    providers = ["CPUExecutionProvider"]
    if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), session_options(threads, reference), providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types
        raise ModelError(f"{path}: onnxruntime cannot load it ({str(error).splitlines()[0]})") from None
    metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, path)
    if not reference:
        from .quantize import warn_if_unverified

        warn_if_unverified(path, metadata)
    return Embedder(path, session, metadata)


def embed_files(embedder: Embedder, paths: list[Path], batch_size: int = 32) -> np.ndarray:
    """Embeddings of image files in order, decoding the next batch while the model runs.
    A file that cannot be decoded raises metrix.images.ImageDecodeError naming it."""
    from concurrent.futures import ThreadPoolExecutor

    def load(chunk):
        return np.stack([load_for_model(path, embedder.metadata)[0] for path in chunk])

    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    out = np.empty((len(paths), embedder.metadata.embedding_size), np.float32)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for i, _ in enumerate(chunks):
            batch = pending.result()
            pending = pool.submit(load, chunks[i + 1]) if i + 1 < len(chunks) else None
            out[i * batch_size : i * batch_size + len(batch)] = embedder.embed(batch)
    return out
