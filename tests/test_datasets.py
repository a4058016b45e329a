"""The dataset parsers, each on a tiny fake tree in the original layout written by the test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metrix.datasets.base import DataError, RetrievalData
from metrix.datasets.benchmarks import BENCHMARKS, load_benchmark, load_cars, load_cub, load_inshop, load_sop
from metrix.datasets.folder import load_data, load_image_folder

CUB100 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cub100"


def image(path: Path, shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade % 256, 0, 0)).save(path)
    return path


def check_common(data: RetrievalData, train_labels: set[int], test_labels: set[int]) -> None:
    """Absolute existing paths; validation carved from, and disjoint from, the training classes."""
    splits = [data.train, data.val, data.test] + ([data.gallery] if data.gallery is not None else [])
    for split in splits:
        for sample in split.samples:
            assert sample.path.is_absolute() and sample.path.is_file()
            assert 0 <= sample.label < len(data.class_names)
    assert set(data.train.classes) | set(data.val.classes) == train_labels
    assert not set(data.train.classes) & set(data.val.classes)
    assert not {s.path for s in data.train.samples} & {s.path for s in data.val.samples}
    assert set(data.test.classes) == test_labels
    assert len(data.val.classes) >= 2


# --- CUB-200-2011 ---------------------------------------------------------------------------

CUB_CLASSES = [1, 2, 3, 4, 101, 102]


def make_cub(root: Path, per_class: int = 3) -> Path:
    base = root / "CUB_200_2011"
    base.mkdir(parents=True)
    (base / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, 201)))
    images, labels = [], []
    for c in CUB_CLASSES:
        for k in range(per_class):
            image_id = len(images) + 1
            relative = f"{c:03d}.Bird_{c}/Bird_{c}_{k}.jpg"
            image(base / "images" / relative, c)
            images.append(f"{image_id} {relative}\n")
            labels.append(f"{image_id} {c}\n")
    (base / "images.txt").write_text("".join(images))
    (base / "image_class_labels.txt").write_text("".join(labels))
    return root


@pytest.mark.parametrize("inside", [False, True], ids=["parent", "CUB_200_2011"])
def test_cub_official_split(tmp_path, inside):
    root = make_cub(tmp_path)
    data = load_cub(root / "CUB_200_2011" if inside else root)
    assert data.name == "cub" and data.gallery is None
    assert (
        len(data.class_names) == 200 and data.class_names[0] == "001.Bird_1" and data.class_names[100] == "101.Bird_101"
    )
    check_common(data, {0, 1, 2, 3}, {100, 101})
    assert len(data.train) + len(data.val) == 12 and len(data.test) == 6
    for sample in data.train.samples + data.test.samples:
        assert sample.path.parent.name == data.class_names[sample.label]


def test_cub_missing_annotation_file(tmp_path):
    root = make_cub(tmp_path)
    (root / "CUB_200_2011" / "image_class_labels.txt").unlink()
    with pytest.raises(DataError, match=r"^CUB-200-2011 root .* is missing CUB_200_2011/image_class_labels\.txt$"):
        load_cub(root)
    with pytest.raises(DataError, match=r"is missing image_class_labels\.txt$"):
        load_cub(root / "CUB_200_2011")


def test_cub_wrong_root(tmp_path):
    with pytest.raises(DataError, match=r"is missing CUB_200_2011/images\.txt"):
        load_cub(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_cub(tmp_path / "nowhere")


def test_cub_missing_images_warn_once(tmp_path):
    root = make_cub(tmp_path)
    gone = sorted((root / "CUB_200_2011" / "images").glob("001.*/*.jpg"))[:2]
    for path in gone:
        path.unlink()
    with pytest.warns(
        UserWarning, match=rf"skipped 2 listed image\(s\) missing on disk, the first .*{gone[0].name}"
    ) as caught:
        data = load_cub(root)
    assert len(caught) == 1
    assert len(data.train) + len(data.val) == 10


def test_cub_empty_split_is_an_error(tmp_path):
    root = make_cub(tmp_path)
    for path in (root / "CUB_200_2011" / "images").glob("10[12].*/*.jpg"):
        path.unlink()
    with pytest.warns(UserWarning), pytest.raises(DataError, match="test split has no images"):
        load_cub(root)


# --- Cars196 --------------------------------------------------------------------------------

CARS_CLASSES = [1, 2, 3, 4, 99, 100]


def make_cars(root: Path, per_class: int = 3) -> Path:
    savemat = pytest.importorskip("scipy.io").savemat
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    rows = []
    for c in CARS_CLASSES:
        for k in range(per_class):
            relative = f"car_ims/{len(rows) + 1:06d}.jpg"
            image(root / relative, c)
            # The file's own test flag, which the protocol ignores: set it against the class split.
            rows.append((relative, 1, 2, 7, 7, c, int(k == 0)))
    annotations = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, (relative, x1, y1, x2, y2, c, test) in enumerate(rows):
        numbers = [np.array([[v]], dtype=np.uint16) for v in (x1, y1, x2, y2)]
        annotations[0, i] = (
            np.array([relative]),
            *numbers,
            np.array([[c]], dtype=np.uint8),
            np.array([[test]], dtype=np.uint8),
        )
    class_names = np.empty((1, 196), dtype=object)
    for c in range(196):
        class_names[0, c] = f"Make Model {c + 1}"
    savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return root


def test_cars_mat_has_the_real_structure(tmp_path):
    loadmat = pytest.importorskip("scipy.io").loadmat
    mat = loadmat(make_cars(tmp_path) / "cars_annos.mat")
    assert mat["annotations"].shape == (1, 18)
    assert set(mat["annotations"].dtype.names) == {
        "relative_im_path",
        "bbox_x1",
        "bbox_y1",
        "bbox_x2",
        "bbox_y2",
        "class",
        "test",
    }
    assert mat["class_names"].shape == (1, 196)


def test_cars_official_split(tmp_path):
    data = load_cars(make_cars(tmp_path))
    assert data.name == "cars"
    assert len(data.class_names) == 196 and data.class_names[98] == "Make Model 99"
    check_common(data, {0, 1, 2, 3}, {98, 99})
    assert len(data.train) + len(data.val) == 12 and len(data.test) == 6
    assert all(s.path.parent.name == "car_ims" for s in data.test.samples)


def test_cars_missing_mat(tmp_path):
    with pytest.raises(DataError, match=r"^Cars196 root .* is missing cars_annos\.mat$"):
        load_cars(tmp_path)


def test_cars_missing_image_is_skipped(tmp_path):
    root = make_cars(tmp_path)
    (root / "car_ims" / "000018.jpg").unlink()
    with pytest.warns(UserWarning, match="skipped 1 listed image.*000018.jpg"):
        data = load_cars(root)
    assert len(data.test) == 5


# --- Stanford Online Products ---------------------------------------------------------------

SOP_TRAIN = {1: "bicycle_final", 2: "bicycle_final", 3: "chair_final", 4: "chair_final"}
SOP_TEST = {5: "sofa_final", 6: "sofa_final"}


def make_sop(root: Path, per_class: int = 3) -> Path:
    image_id = 0
    for name, classes in (("Ebay_train.txt", SOP_TRAIN), ("Ebay_test.txt", SOP_TEST)):
        lines = ["image_id class_id super_class_id path\n"]
        for class_id, folder in classes.items():
            for k in range(per_class):
                image_id += 1
                relative = f"{folder}/{class_id}_{k}.JPG"
                image(root / relative, class_id)
                lines.append(f"{image_id} {class_id} {1 + list(SOP_TRAIN.values()).count(folder)} {relative}\n")
        (root / name).write_text("".join(lines))
    return root


def test_sop_official_split(tmp_path):
    data = load_sop(make_sop(tmp_path))
    assert data.name == "sop"
    assert data.class_names == [
        "bicycle_final/1",
        "bicycle_final/2",
        "chair_final/3",
        "chair_final/4",
        "sofa_final/5",
        "sofa_final/6",
    ]
    check_common(data, {0, 1, 2, 3}, {4, 5})
    assert len(data.test) == 6


def test_sop_missing_split_file(tmp_path):
    root = make_sop(tmp_path)
    (root / "Ebay_test.txt").unlink()
    with pytest.raises(DataError, match=r"^Stanford Online Products root .* is missing Ebay_test\.txt$"):
        load_sop(root)


def test_sop_malformed_row(tmp_path):
    root = make_sop(tmp_path)
    with (root / "Ebay_train.txt").open("a") as f:
        f.write("99 seven 1 bicycle_final/x.JPG\n")
    with pytest.raises(DataError, match="Ebay_train.txt line 14"):
        load_sop(root)


# --- In-Shop Clothes Retrieval --------------------------------------------------------------


def make_inshop(root: Path, image_dir: str = "") -> Path:
    rows = []
    for item in range(1, 7):
        item_id = f"id_{item:08d}"
        statuses = ["train"] * 3 if item <= 4 else ["query", "gallery", "gallery"]
        for k, status in enumerate(statuses):
            name = f"img/WOMEN/Dresses/{item_id}/{k:02d}_1_front.jpg"
            image(root / image_dir / name, item)
            rows.append(f"{name} {item_id} {status}\n")
    header = f"{len(rows)}\nimage_name item_id evaluation_status\n"
    (root / "list_eval_partition.txt").write_text(header + "".join(rows))
    return root


@pytest.mark.parametrize("image_dir", ["", "Img"])
def test_inshop_query_gallery(tmp_path, image_dir):
    data = load_inshop(make_inshop(tmp_path, image_dir))
    assert data.name == "inshop"
    assert data.class_names == [f"id_{i:08d}" for i in range(1, 7)]
    check_common(data, {0, 1, 2, 3}, {4, 5})
    assert len(data.test) == 2 and all(s.path.name.startswith("00_") for s in data.test.samples)
    assert data.gallery is not None and len(data.gallery) == 4 and data.gallery.classes == [4, 5]
    for sample in data.test.samples + data.gallery.samples:
        assert sample.path.parent.name == data.class_names[sample.label]


def test_inshop_missing_partition(tmp_path):
    with pytest.raises(DataError, match=r"^In-Shop Clothes Retrieval root .* is missing list_eval_partition\.txt$"):
        load_inshop(tmp_path)


def test_inshop_bad_status(tmp_path):
    root = make_inshop(tmp_path)
    with (root / "list_eval_partition.txt").open("a") as f:
        f.write("img/x.jpg id_00000001 val\n")
    with pytest.raises(DataError, match="status 'val'"):
        load_inshop(root)


# --- load_benchmark -------------------------------------------------------------------------


def test_load_benchmark(tmp_path):
    assert set(BENCHMARKS) == {"cub", "cars", "sop", "inshop"}
    assert load_benchmark("sop", make_sop(tmp_path)).name == "sop"
    with pytest.raises(DataError, match="unknown dataset 'imagenet'; known: cub, cars, sop, inshop"):
        load_benchmark("imagenet", tmp_path)


# --- ImageFolder ----------------------------------------------------------------------------


def make_folder(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            image(root / name / f"{k}{ext}", k)
    return root


def names(data: RetrievalData, split) -> list[str]:
    return [data.class_names[c] for c in split.classes]


def test_folder_default_half_split(tmp_path):
    root = make_folder(tmp_path, {f"c{i}": 2 for i in range(10)})
    data = load_image_folder(root)
    assert data.name == "folder" and data.class_names == [f"c{i}" for i in range(10)]
    check_common(data, {0, 1, 2, 3, 4}, {5, 6, 7, 8, 9})
    assert len(data.test) == 10


def test_folder_odd_class_count_gives_test_the_extra_class(tmp_path):
    root = make_folder(tmp_path, {name: 2 for name in "abcde"})
    data = load_image_folder(root, val_fraction=0)
    assert names(data, data.train) == ["a", "b"] and names(data, data.test) == ["c", "d", "e"]
    assert len(data.val) == 0


@pytest.mark.parametrize("given", [3, "3", " 3 "])
def test_folder_train_classes_count(tmp_path, given):
    data = load_image_folder(make_folder(tmp_path, {name: 2 for name in "abcde"}), train_classes=given, val_fraction=0)
    assert names(data, data.train) == ["a", "b", "c"] and names(data, data.test) == ["d", "e"]


@pytest.mark.parametrize("given", ["e, b", ["e", "b"]])
def test_folder_train_classes_names(tmp_path, given):
    data = load_image_folder(make_folder(tmp_path, {name: 2 for name in "abcde"}), train_classes=given, val_fraction=0)
    assert names(data, data.train) == ["b", "e"] and names(data, data.test) == ["a", "c", "d"]
    assert data.class_names == list("abcde")


def test_folder_train_classes_errors(tmp_path):
    root = make_folder(tmp_path, {name: 2 for name in "abcd"})
    with pytest.raises(DataError, match=r"not class folders with images in .*\['x', 'y'\]"):
        load_image_folder(root, train_classes="a,x,y")
    with pytest.raises(DataError, match="train_classes=4 but .* has 4 classes"):
        load_image_folder(root, train_classes=4)
    with pytest.raises(DataError, match="training split .* has 1 class"):
        load_image_folder(root, train_classes=1)
    with pytest.raises(DataError, match="test split .* has 1 class"):
        load_image_folder(root, train_classes=3, val_fraction=0)
    (tmp_path.parent / "split.json").write_text('{"train": ["a", "b"]}')
    with pytest.raises(DataError, match="not both"):
        load_image_folder(root, train_classes=2, split_file=tmp_path.parent / "split.json")


def test_folder_split_file(tmp_path):
    root = make_folder(tmp_path / "data", {name: 2 for name in "abcdef"})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["f", "a"], "test": ["c", "d"]}))
    data = load_image_folder(root, split_file=split, val_fraction=0)
    assert names(data, data.train) == ["a", "f"] and names(data, data.test) == ["c", "d"]
    split.write_text(json.dumps({"train": ["a", "b", "c"]}))
    data = load_image_folder(root, split_file=split, val_fraction=0)
    assert names(data, data.test) == ["d", "e", "f"]


def test_folder_split_file_errors(tmp_path):
    root = make_folder(tmp_path / "data", {name: 2 for name in "abcd"})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a", "b"], "test": ["c", "zebra"]}))
    with pytest.raises(DataError, match=r"split file .* not class folders with images .*\['zebra'\]"):
        load_image_folder(root, split_file=split)
    split.write_text(json.dumps({"train": ["a", "b"], "test": ["b", "c"]}))
    with pytest.raises(DataError, match=r"both train and test: \['b'\]"):
        load_image_folder(root, split_file=split)
    split.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_image_folder(root, split_file=split)
    with pytest.raises(DataError, match="cannot read the split file"):
        load_image_folder(root, split_file=tmp_path / "absent.json")


def test_folder_single_image_class(tmp_path):
    root = make_folder(tmp_path, {"a": 2, "b": 1, "c": 2, "d": 1})
    with pytest.raises(DataError, match=r"2 class folder\(s\) with a single image .*\['b', 'd'\]"):
        load_image_folder(root)


def test_folder_too_few_classes(tmp_path):
    root = make_folder(tmp_path, {"only": 3})
    (root / "notes.png").write_bytes(b"")  # a file in root itself is no class
    with pytest.raises(DataError, match=r"has 1 class folder\(s\) with images; need at least 2"):
        load_image_folder(root)


def test_folder_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist or is not a directory"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="does not exist or is not a directory"):
        load_image_folder(tmp_path / "file.txt")


def test_folder_empty_class_is_skipped_with_a_warning(tmp_path):
    root = make_folder(tmp_path, {name: 2 for name in "abcd"})
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    with pytest.warns(UserWarning, match=r"skipped 1 class folder\(s\) without images .*\['empty'\]"):
        data = load_image_folder(root, val_fraction=0)
    assert data.class_names == list("abcd")


def test_folder_nested_hidden_non_image_and_uppercase(tmp_path):
    root = make_folder(tmp_path, {name: 2 for name in "abcd"})
    image(root / "a" / "deeper" / "still" / "x.png")
    image(root / "b" / "UPPER.JPG")
    image(root / "b" / "Mixed.JpEg")
    image(root / "c" / ".hidden.png")
    image(root / "c" / ".cache" / "y.png")
    image(root / ".hidden_class" / "z.png")
    (root / "d" / "labels.csv").write_text("x")
    (root / "d" / "fake.png.txt").write_text("x")
    data = load_image_folder(root, train_classes=2, val_fraction=0)
    assert data.class_names == list("abcd")
    by_class: dict[str, list[str]] = {name: [] for name in "abcd"}
    for s in data.train.samples + data.test.samples:
        by_class[data.class_names[s.label]].append(s.path.relative_to(root).as_posix())
    assert by_class["a"] == ["a/0.png", "a/1.png", "a/deeper/still/x.png"]
    assert by_class["b"] == ["b/0.png", "b/1.png", "b/Mixed.JpEg", "b/UPPER.JPG"]
    assert by_class["c"] == ["c/0.png", "c/1.png"]
    assert by_class["d"] == ["d/0.png", "d/1.png"]
    assert all(s.path.is_absolute() for s in data.train.samples)


def test_folder_symlink_loop_does_not_hang(tmp_path):
    root = make_folder(tmp_path, {name: 2 for name in "abcd"}, ext=".jpg")
    os.symlink(root / "a", root / "a" / "loop")
    os.symlink(root, root / "b" / "up")
    data = load_image_folder(root, val_fraction=0)
    assert len(data.train) == 4 and len(data.test) == 4


# --- load_data ------------------------------------------------------------------------------


def test_load_data_choices(tmp_path):
    folder = make_folder(tmp_path / "folder", {name: 2 for name in "abcd"})
    sop = make_sop(tmp_path / "sop")
    assert load_data(data=folder, val_fraction=0).name == "folder"
    assert load_data(data=folder, train_classes="a,b", val_fraction=0).train.classes == [0, 1]
    assert load_data(dataset="sop", data_root=sop).name == "sop"
    with pytest.raises(DataError, match="^give --data DIR or --dataset NAME --data-root DIR$"):
        load_data()
    with pytest.raises(DataError, match="not both"):
        load_data(data=folder, dataset="sop", data_root=sop)
    with pytest.raises(DataError, match="needs --data-root"):
        load_data(dataset="sop")
    with pytest.raises(DataError, match="unknown dataset"):
        load_data(dataset="mnist", data_root=sop)
    with pytest.raises(DataError, match="official split"):
        load_data(dataset="sop", data_root=sop, train_classes=2)
    with pytest.raises(DataError, match="--data-root goes with --dataset"):
        load_data(data=folder, data_root=sop)


# --- the real cub100 ImageFolder ------------------------------------------------------------


@pytest.mark.skipif(not CUB100.is_dir(), reason=f"{CUB100} is absent")
def test_real_cub100():
    data = load_image_folder(CUB100)
    assert len(data.class_names) == 100
    assert all(name.startswith(f"{i:02d}_") for i, name in enumerate(data.class_names))
    check_common(data, set(range(50)), set(range(50, 100)))
    assert len(data.val.classes) == 10
    assert len(data.test) == 2953
