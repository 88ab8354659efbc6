"""`kerastrace.io`: archive checks before loading, safe loading, atomic writes."""

import json
import os
import stat
import struct
import tracemalloc
import zipfile

import keras
import numpy as np
import pytest

from kerastrace.io import ArchiveError, atomic_write, check_archive, load_model

MiB = 2**20


def _model(path):
    from kerastrace.layers import TransformerBlock

    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 8))
    out, _ = TransformerBlock(2, 16, name="blk")(inp)
    model = keras.Model(inp, out)
    model.save(path)
    return model


def _zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def zip_bomb(path, size, name="config.json"):
    """An honest zip bomb: `name` really inflates to `size` bytes of zeros."""
    chunk = b"\0" * MiB
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(name, "w", force_zip64=True) as f:
            for _ in range(size // MiB):
                f.write(chunk)
    return path


def forge_size(path, name, size):
    """Rewrite the uncompressed size the central directory declares for `name`."""
    data = bytearray(open(path, "rb").read())
    pos = 0
    while True:
        pos = data.index(b"PK\x01\x02", pos)
        n = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46 : pos + 46 + n].decode() == name:
            struct.pack_into("<I", data, pos + 24, size)
            break
        pos += 4
    open(path, "wb").write(bytes(data))


def test_round_trip_with_kerastrace_layers(tmp_path):
    model = _model(tmp_path / "ok.keras")
    loaded = load_model(tmp_path / "ok.keras")
    x = np.random.default_rng(0).normal(size=(2, 4, 8)).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    assert check_archive(tmp_path / "ok.keras")["class_name"] == "Functional"


def test_zip_bomb_is_refused_without_inflating_it(tmp_path):
    path = zip_bomb(tmp_path / "bomb.keras", 80 * MiB)
    assert os.path.getsize(path) < MiB // 4  # 80 MiB of zeros compress ~1000x
    tracemalloc.start()
    with pytest.raises(ArchiveError, match=r"'config.json' expands to 80.0 MiB .* more than the "
                                           r"limit of 64.0 MiB \(`max_config_bytes`\).*zip bomb"):
        load_model(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * MiB  # nothing was inflated


def test_declared_sizes_are_the_cap(tmp_path):
    # a header that declares 1.5 GiB is refused on what it declares ...
    path = _zip(tmp_path / "big.keras", {"config.json": "{}", "model.weights.h5": b"x"})
    forge_size(path, "config.json", 3 * 2**29)
    with pytest.raises(ArchiveError, match=r"expands to 1.5 GiB"):
        check_archive(path)
    # ... and the total of all members counts too
    path = _zip(tmp_path / "total.keras", {"config.json": "{}", "a.bin": b"x" * 2000,
                                           "b.bin": b"y" * 2000})  # fmt: skip
    with pytest.raises(ArchiveError, match=r"expand to 3.9 KiB in all.*`max_total_bytes`"):
        check_archive(path, max_total_bytes=3000)


@pytest.mark.parametrize(
    "name, why",
    [
        ("../escape.txt", "climbs out of the archive"),
        ("assets/../../escape.txt", "climbs out of the archive"),
        ("..\\escape.txt", "climbs out of the archive"),
        ("/etc/passwd", "is an absolute path"),
        ("C:/Windows/x", "is an absolute path"),
    ],
)
def test_unsafe_member_names(tmp_path, name, why):
    path = _zip(tmp_path / "evil.keras", {"config.json": "{}", name: "x"})
    with pytest.raises(ArchiveError, match=f"member {name!r} {why}".replace("\\", "\\\\")
                       .replace("(", r"\(").replace(".", r"\.")):  # fmt: skip
        load_model(path)


def test_symlink_and_duplicate_members(tmp_path):
    path = tmp_path / "link.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", "{}")
        info = zipfile.ZipInfo("assets/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="'assets/link' is a symbolic link"):
        check_archive(path)
    path = tmp_path / "dup.keras"
    with pytest.warns(UserWarning, match="Duplicate name"):
        _zip(path, {"config.json": "{}"})
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr("config.json", '{"class_name": "Other"}')
    with pytest.raises(ArchiveError, match="'config.json' appears twice"):
        check_archive(path)


def test_member_count_limit(tmp_path):
    path = _zip(tmp_path / "many.keras", {"config.json": "{}",
                                          **{f"assets/{i}": "" for i in range(60)}})  # fmt: skip
    with pytest.raises(ArchiveError, match=r"61 archive members, more than the limit of 50"):
        check_archive(path, max_members=50)
    assert check_archive(path) == {}
    with pytest.raises(ValueError, match=r"`max_members`.*Received: max_members=0"):
        check_archive(path, max_members=0)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"plain text, not a zip", "is not a Keras model file: a `.keras` file is a zip"),
        ({"model.weights.h5": b"x"}, r"no config.json inside"),
        ({"config.json": "{not json"}, r"its config.json is not JSON"),
        ({"config.json": "[1, 2]"}, r"its config.json is not a dict"),
    ],
)
def test_not_a_keras_archive(tmp_path, content, message):
    path = tmp_path / "m.keras"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        _zip(path, content)
    with pytest.raises(ValueError, match=message):
        load_model(path)


def test_paths_that_are_not_model_files(tmp_path):
    (tmp_path / "dir.keras").mkdir()
    with pytest.raises(ValueError, match=r"'.*dir.keras' is a directory, not a Keras model file"):
        load_model(tmp_path / "dir.keras")
    with pytest.raises(FileNotFoundError, match="No model file at"):
        load_model(tmp_path / "missing.keras")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ValueError, match=r"Received extension '.txt'"):
        load_model(tmp_path / "m.txt")
    (tmp_path / "m.h5").write_bytes(b"PK\x03\x04 not hdf5")
    with pytest.raises(ValueError, match="HDF5 signature"):
        load_model(tmp_path / "m.h5")
    with pytest.raises(TypeError, match="custom_objects"):
        load_model(tmp_path / "m.h5", custom_objects=["x"])
    with pytest.raises(ValueError, match="safe_mode"):
        load_model(tmp_path / "m.h5", safe_mode="no")


def test_lambda_refused_in_safe_mode_naming_the_layer(tmp_path):
    inp = keras.Input((3,))
    out = keras.layers.Lambda(lambda t: t * 2.0, output_shape=(3,), name="doubler")(inp)
    model = keras.Model(inp, out)
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match=r"Lambda layer\(s\) \['doubler'\].*safe_mode=False"):
        load_model(tmp_path / "lambda.keras")
    loaded = load_model(tmp_path / "lambda.keras", safe_mode=False)
    np.testing.assert_allclose(loaded(np.ones((1, 3), "float32")), [[2.0, 2.0, 2.0]])


def test_keras_load_errors_are_one_clear_line(tmp_path):
    model = _model(tmp_path / "ok.keras")
    config = json.loads(zipfile.ZipFile(tmp_path / "ok.keras").read("config.json"))
    config["config"]["layers"][1]["class_name"] = "NoSuchLayer"
    config["config"]["layers"][1]["module"] = None
    config["config"]["layers"][1]["registered_name"] = "kt_test>NoSuchLayer"
    with zipfile.ZipFile(tmp_path / "ok.keras") as src, \
            zipfile.ZipFile(tmp_path / "custom.keras", "w") as dst:  # fmt: skip
        for info in src.infolist():
            data = json.dumps(config) if info.filename == "config.json" else src.read(info)
            dst.writestr(info.filename, data)
    with pytest.raises(ValueError, match=r"custom class .*NoSuchLayer.*not registered"):
        load_model(tmp_path / "custom.keras")
    del model


def test_atomic_write_bytes_str_callable_and_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.bin", b"\x00\x01")
        atomic_write(tmp_path / "b.txt", "héllo")
        atomic_write(tmp_path / "c.npy", lambda f: np.save(f, np.arange(3)))
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text("utf-8") == "héllo"
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), [0, 1, 2])
    for name in ("a.bin", "b.txt", "c.npy"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644  # not mkstemp's 0600


def test_atomic_write_failure_keeps_the_old_file_and_no_temporary(tmp_path):
    atomic_write(tmp_path / "x.json", '{"v": 1}')

    def boom(f):
        f.write(b'{"v": ')  # half-written ...
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(tmp_path / "x.json", boom)
    assert json.loads((tmp_path / "x.json").read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["x.json"]
    with pytest.raises(TypeError, match="`data`.*int"):
        atomic_write(tmp_path / "y", 42)
    with pytest.raises(FileNotFoundError, match="no directory"):
        atomic_write(tmp_path / "missing" / "y", "x")
