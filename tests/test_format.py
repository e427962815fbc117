import numpy as np
import pytest

from hypercompile import BundleError
from hypercompile.core import tensors as fmt


def test_tensors_round_trip_every_dtype(tmp_path):
    tensors = {
        "w": np.random.randn(3, 4).astype(np.float32),
        "d": np.arange(5, dtype=np.float64),
        "i": np.arange(6, dtype=np.int64).reshape(2, 3),
        "h": np.ones(3, np.float16),
        "b": np.array([True, False]),
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }
    size = fmt.write_tensors(tmp_path / "t.safetensors", tensors)
    data = (tmp_path / "t.safetensors").read_bytes()
    assert size == len(data)
    back = fmt.read_tensors(data)
    assert list(back) == list(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)


def test_weight_file_is_safetensors_layout_without_pickle(tmp_path):
    fmt.write_tensors(tmp_path / "t", {"a": np.ones(2, np.float32)})
    data = (tmp_path / "t").read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert data[8 : 8 + n].decode().startswith('{"a":{"dtype":"F32"')
    assert b"\x80" not in data[:2]  # not a pickle stream


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:4],  # truncated before the header length
        lambda d: (10**9).to_bytes(8, "little") + d[8:],  # header length out of range
        lambda d: d[:8] + b"{not json" + d[17:],
        lambda d: d[:-4],  # tensor data cut short
    ],
)
def test_damaged_weight_file_is_refused(tmp_path, damage):
    fmt.write_tensors(tmp_path / "t", {"a": np.ones((4, 4), np.float32)})
    data = damage((tmp_path / "t").read_bytes())
    with pytest.raises(BundleError, match="damaged"):
        fmt.read_tensors(data)


@pytest.mark.parametrize("rel", ["../x", "/etc/passwd", "a/../../x", "..\\x", "~/x", ""])
def test_safe_path_refuses_paths_leaving_the_bundle(tmp_path, rel):
    with pytest.raises(BundleError):
        fmt.safe_path(tmp_path, rel)


def test_safe_path_refuses_symlink_out_of_bundle(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "link").symlink_to(tmp_path)
    with pytest.raises(BundleError, match="leaves the bundle"):
        fmt.safe_path(tmp_path / "b", "link/secret")
    assert fmt.safe_path(tmp_path / "b", "weights/v0.safetensors").name == "v0.safetensors"
