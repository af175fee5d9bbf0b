"""The wheelhouse (install/wheelhouse.py, pieces.py, offline.py) and the host's torch (install/host_torch.py), with no
network: uv's output and the index's file lists are given."""

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_vllmcompat import matrix
from pytest_vllmcompat.errors import HostTorchError, WheelhouseError
from pytest_vllmcompat.install import host_torch, offline, pieces, plan, resolve, wheelhouse

MATRIX = matrix.load()
CELL = MATRIX.cell("0.12.0", "5", "cuda")
# What `uv pip compile` prints (annotations kept): vllm needs torch, numpy, flashinfer; flashinfer alone needs cuda-tile.
UV_OUT = """cuda-tile==1.7.0
    # via flashinfer-python
flashinfer-python==0.6.1
    # via vllm
numpy==2.3.5
    # via
    #   torch
    #   vllm
pytest==9.1.1
    # via -r /tmp/x/requirements.in
torch==2.11.0
    # via vllm
transformers==5.17.0
    # via
    #   --override /tmp/x/overrides.txt
    #   -r /tmp/x/requirements.in
vllm==0.12.0
    # via -r /tmp/x/requirements.in
"""
HAVE = {"torch": "2.11.0", "numpy": "2.5.2", "Transformers": "5.17.0", "pytest": "9.1.1", "cuda-tile": "1.0"}


@pytest.fixture
def lock(monkeypatch):
    monkeypatch.setattr(resolve, "_compile", lambda *a, **k: (UV_OUT, 0.1))
    return resolve.resolve_lock(offline_plan(), "3.12", "x86_64-manylinux_2_39", prefer=HAVE, exclude=["flashinfer*"])


def offline_plan():
    return plan.install_plan(MATRIX, CELL)


def test_exclude_leaves_out_what_only_the_excluded_need(lock):
    assert lock.excluded == {"flashinfer-python": "--exclude flashinfer*", "cuda-tile": "only for flashinfer-python"}
    assert set(lock.pins) == {"numpy", "pytest", "torch", "transformers", "vllm"}


def test_the_destination_keeps_what_it_has_at_the_locked_version_and_the_rest_is_carried(lock, tmp_path):
    todo = offline.from_lock(lock, HAVE, "test")
    assert todo.reused == {"torch": "2.11.0", "transformers": "5.17.0", "pytest": "9.1.1"}  # dropped
    assert todo.carried == {"numpy": ("2.5.2", "2.3.5")}
    assert "carried: host has numpy==2.5.2, cell needs numpy==2.3.5" in todo.summary()
    assert todo.requirements == ["numpy==2.3.5", "vllm==0.12.0"]
    args = todo.write(tmp_path)
    assert args[:2] == ["--no-deps", "-r"] and Path(args[2]).read_text() == "numpy==2.3.5\nvllm==0.12.0\n"


def test_a_host_torch_with_a_local_part_is_the_cells_torch(lock):
    todo = offline.from_lock(lock, {**HAVE, "torch": "2.11.0+cu130"}, "test")
    assert todo.carried["torch"] == ("2.11.0+cu130", "2.11.0")
    assert offline.reuse_host_torch(todo).reused["torch"] == "2.11.0" and "torch" not in offline.reuse_host_torch(todo).carried


def test_the_wheel_set_adds_the_build_backend_and_nox_never_dropped(lock):
    todo = offline.from_lock(lock, HAVE, "test")
    wanted = wheelhouse.WheelPlan(CELL, wheelhouse.destination("3.12", "manylinux_2_39_x86_64"), todo,
                                {"setuptools": "80.10.2"}, {"nox": "2026.1.1", "numpy": "2.3.5"}, {})
    assert wanted.wanted() == {("numpy", "2.3.5"): ["cell", "runner"], ("vllm", "0.12.0"): ["cell"],
                             ("setuptools", "80.10.2"): ["build"], ("nox", "2026.1.1"): ["runner"]}


@pytest.mark.parametrize("text", ["manylinux_2_39_x86_64", "x86_64-manylinux_2_39", "linux x86_64 glibc 2.39"])
def test_destination_platforms(text):
    dest = wheelhouse.destination("3.12", text)
    assert dest.uv_platform == "x86_64-manylinux_2_39"
    assert dest.platforms[0] == "manylinux_2_39_x86_64" and "manylinux2014_x86_64" in dest.platforms


def test_the_wheel_uv_would_install_is_chosen():
    dest = wheelhouse.destination("3.12", "manylinux_2_39_x86_64")
    files = [{"filename": f} for f in ("numpy-2.3.5-cp311-cp311-manylinux_2_28_x86_64.whl",
                                       "numpy-2.3.5-cp312-cp312-musllinux_1_2_x86_64.whl",
                                       "numpy-2.3.5-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                                       "numpy-2.3.5-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl")]
    assert wheelhouse.choose(files, "numpy", "2.3.5", dest)["filename"].endswith("manylinux_2_28_x86_64.whl")
    with pytest.raises(WheelhouseError, match=r"numpy==2.3.5: no wheel for CPython 3.12 x86_64-manylinux_2_40"):
        wheelhouse.choose(files[:2], "numpy", "2.3.5", wheelhouse.destination("3.12", "manylinux_2_40_x86_64"))


def test_have_list_reads_pip_freeze(tmp_path):
    (tmp_path / "freeze.txt").write_text("Torch==2.11.0\n-e git+https://x#egg=y\nfoo @ file:///x.whl\ntyping_extensions==4.16.0\n")
    assert wheelhouse.read_have(tmp_path / "freeze.txt") == {"torch": "2.11.0", "typing-extensions": "4.16.0"}


@pytest.fixture
def split_house(tmp_path):
    """Three files, pieces of 2 MiB: the 5 MiB one in three chunks."""
    files = []
    for name, size in (("big-1.0-py3-none-any.whl", 5 << 20), ("a-1.0-py3-none-any.whl", 700 << 10),
                       ("b-1.0-py3-none-any.whl", 300 << 10)):
        path = tmp_path / "src" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(bytes(range(256)) * (size // 256) + name.encode())
        files.append(path)
    data = {"cell": {"session": CELL.session}, "files": [
        {"filename": p.name, "sha256": pieces.sha256(p), "size": p.stat().st_size} for p in files]}
    folders = pieces.split(files, tmp_path / "out", 2 << 20, data)
    return files, folders


def test_split_into_pieces_no_larger_than_the_limit(split_house):
    files, folders = split_house
    assert [f.name for f in folders] == [f"piece-{i:02d}" for i in range(1, len(folders) + 1)]
    assert all(sum(f.stat().st_size for f in d.iterdir()) <= 2 << 20 for d in folders)
    parts = sorted(p.name for d in folders for p in d.glob("big-*.part-*"))
    assert parts == [f"big-1.0-py3-none-any.whl.part-00{i}" for i in range(3)]
    assert {p.name for p in folders[0].iterdir()} >= {"manifest.json", "SHA256SUMS", "rejoin.sh"}


def test_rejoin_restores_identical_files(split_house, tmp_path):
    files, folders = split_house
    manifest = pieces.rejoin(folders, tmp_path / "wh")
    for f in files:
        assert (tmp_path / "wh" / f.name).read_bytes() == f.read_bytes()
    assert (tmp_path / "wh" / "manifest.json").is_file() and len(manifest["files"]) == 3


def test_the_shell_fallback_rejoins_and_checks(split_house, tmp_path):
    files, folders = split_house
    out = subprocess.run(["sh", str(folders[0] / "rejoin.sh"), str(tmp_path / "sh"), *map(str, folders)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert all((tmp_path / "sh" / f.name).read_bytes() == f.read_bytes() for f in files)


def test_a_corrupt_or_missing_chunk_is_refused_naming_the_file(split_house, tmp_path):
    files, folders = split_house
    chunk = next(p for d in folders for p in d.glob("big-*.part-001"))
    data = bytearray(chunk.read_bytes())
    data[10] ^= 1
    chunk.write_bytes(bytes(data))
    with pytest.raises(WheelhouseError, match=r"^big-1.0-py3-none-any.whl: sha256 .* is not the manifest's"):
        pieces.rejoin(folders, tmp_path / "wh1")
    chunk.unlink()
    with pytest.raises(WheelhouseError, match=r"^big-1.0-py3-none-any.whl: its part piece-\d+/big-1.0-py3-none-any"
                                              r".whl.part-001 is missing"):
        pieces.rejoin(folders, tmp_path / "wh2")
    with pytest.raises(WheelhouseError, match=r"piece piece-02 is missing"):
        pieces.rejoin([folders[0]], tmp_path / "wh3")


def test_a_wheelhouse_for_another_cell_is_refused(split_house, monkeypatch):
    _, folders = split_house
    monkeypatch.setattr(offline, "read_manifest", lambda d: {"schema": 1, "cell": {"session": "vllm-0.11.1(tf4)",
                        "lane": "cuda", "target": CELL.target}, "lock": {}})
    with pytest.raises(WheelhouseError, match=r"was made for vllm-0.11.1\(tf4\) \[cuda\] trl==0.29.1, not for "
                                              r"vllm-0.12.0\(tf5\)"):
        offline.from_manifest(folders[0], CELL, {})
    with pytest.raises(WheelhouseError, match="VLLMCOMPAT_WHEELHOUSE=/nonexistent: no wheelhouse there"):
        offline.wheelhouse_dir({"VLLMCOMPAT_WHEELHOUSE": "/nonexistent"})


def host(torch="2.11.0", build="2.11.0+cu130", cuda="13.0"):
    packages = {"torch": torch} if torch else {}
    return host_torch.HostPython("/opt/torch/.venv/bin/python3", "3.12", ("/opt/site",), packages, build, cuda)


def test_the_hosts_torch_is_reused_when_it_is_the_cells():
    line = host_torch.check("cuda", "2.11.0", host(), "vllm-0.22.0(tf5)")
    assert line == ("torch from the host: 2.11.0+cu130, CUDA 13.0 (/opt/torch/.venv/bin/python3) for the cell's "
                    "torch==2.11.0")
    assert host_torch.check("cpu", "2.11.0", host(cuda=None))


@pytest.mark.parametrize("pin, the_host, problem", [
    ("2.9.0", host(), "needs torch==2.9.0; the host (/opt/torch/.venv/bin/python3) has torch 2.11.0+cu130: not the"),
    ("2.11.0+cu128", host(), "needs torch==2.11.0+cu128; the host (/opt/torch/.venv/bin/python3) has torch 2.11.0+cu130"),
    ("2.11.0", host(build="2.11.0+cpu", cuda=None), "the host's torch 2.11.0+cpu (/opt/torch/.venv/bin/python3) is not a CUDA build"),
    ("2.11.0", host(torch=None, build=None, cuda=None), "the host (/opt/torch/.venv/bin/python3) has no torch"),
], ids=["other-version", "other-local", "cpu-build", "none"])
def test_another_torch_is_refused_naming_both(pin, the_host, problem):
    with pytest.raises(HostTorchError, match="^VLLMCOMPAT_HOST_TORCH: vllm-0.22.0") as info:
        host_torch.check("cuda", pin, the_host, "vllm-0.22.0")
    assert problem in str(info.value)


def test_host_torch_setting(tmp_path):
    assert host_torch.requested({}) is None and host_torch.requested({"VLLMCOMPAT_HOST_TORCH": "0"}) is None
    assert host_torch.requested({"VLLMCOMPAT_HOST_TORCH": "1"})  # python3 on PATH
    with pytest.raises(HostTorchError, match="no interpreter /nonexistent/python"):
        host_torch.requested({"VLLMCOMPAT_HOST_TORCH": "/nonexistent/python"})
    assert host_torch.pth_text(host()) == "import site; site.addsitedir('/opt/site')\n"


def test_reading_this_interpreter():
    me = host_torch.read(sys.executable)
    assert me.version == f"{sys.version_info[0]}.{sys.version_info[1]}" and "pytest" in me.packages
    assert host_torch.torch_source() in (None, "cell", "host")


@pytest.fixture
def sdist(tmp_path, monkeypatch):
    """A source-only distribution on a file:// "index", and `uv build` replaced by a builder that writes the wheel
    named by the test (the real `uv build` is what made the H200 wheelhouse's DeepSpeed wheel)."""
    source = tmp_path / "index" / "tinyds-1.0.tar.gz"
    source.parent.mkdir()
    source.write_bytes(b"not really a tarball")
    built = {"name": "tinyds-1.0-py3-none-any.whl", "rc": 0}

    def fake_build(cmd, **kwargs):
        assert cmd[-5:-1] == ["build", "--wheel", "--out-dir", cmd[-2]] and cmd[-1].endswith("tinyds-1.0.tar.gz")
        if built["rc"] == 0:
            Path(cmd[-2]).mkdir(parents=True, exist_ok=True)
            (Path(cmd[-2]) / built["name"]).write_bytes(b"wheel bytes")
        return subprocess.CompletedProcess(cmd, built["rc"], "", "error: setup.py failed\n")

    monkeypatch.setattr(wheelhouse.subprocess, "run", fake_build)
    entry = {"filename": source.name, "url": source.as_uri(), "hashes": {"sha256": pieces.sha256(source)}}
    return entry, built, tmp_path / "cache"


def test_a_source_only_distribution_is_built_and_kept_when_its_wheel_fits(sdist):
    entry, _, cache = sdist
    wheel, source = wheelhouse.wheel_from_sdist("tinyds", "1.0", entry, cache,
                                                wheelhouse.destination("3.12", "manylinux_2_39_x86_64"))
    assert wheel == cache / "tinyds-1.0-py3-none-any.whl" and wheel.read_bytes() == b"wheel bytes"
    assert source == {"sdist": "tinyds-1.0.tar.gz", "sha256": entry["hashes"]["sha256"]}


def test_a_built_wheel_that_does_not_fit_the_destination_is_refused(sdist):
    entry, built, cache = sdist
    built["name"] = "tinyds-1.0-cp311-cp311-linux_x86_64.whl"  # compiled here, for this machine's Python
    with pytest.raises(WheelhouseError, match=r"tinyds==1.0: no wheel for CPython 3.12 x86_64-manylinux_2_39"):
        wheelhouse.wheel_from_sdist("tinyds", "1.0", entry, cache, wheelhouse.destination("3.12", "manylinux_2_39_x86_64"))


def test_a_failed_source_build_is_refused_with_its_output(sdist):
    entry, built, cache = sdist
    built["rc"] = 1
    with pytest.raises(WheelhouseError, match=r"(?s)only tinyds-1.0.tar.gz, and building its wheel failed "
                                              r"\(uv build, exit 1\):\nerror: setup.py failed"):
        wheelhouse.wheel_from_sdist("tinyds", "1.0", entry, cache, wheelhouse.destination("3.12", "manylinux_2_39_x86_64"))


def test_a_source_with_another_sha256_is_refused(sdist):
    entry, _, cache = sdist
    with pytest.raises(WheelhouseError, match=r"tinyds-1.0.tar.gz: downloaded sha256 \w+ is not the index's 00ff"):
        wheelhouse.wheel_from_sdist("tinyds", "1.0", {**entry, "hashes": {"sha256": "00ff"}}, cache,
                                    wheelhouse.destination("3.12", "manylinux_2_39_x86_64"))
