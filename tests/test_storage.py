"""`flanrec.files.storage`, the one file-system layer: URL paths kept whole, one atomic write, one
directory publish with the ownership marker written last, on a local disk and on TensorFlow's
in-memory `ram://` file system (an object-store-like file system that runs here: directories
are implicit and renaming one does not move its children, as on GCS).
"""

from __future__ import annotations

import os
import stat
import uuid

import pytest

from flanrec.files import outputs, storage


def _ram(name: str) -> str:
    return f"ram://flanrec-test-{uuid.uuid4().hex[:8]}/{name}"


def test_urls_are_never_mangled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.normalize("gs://bucket/x/") == "gs://bucket/x"
    assert storage.normalize("gs://bucket//a") == "gs://bucket//a"  # no normpath
    assert storage.normalize("runs/x") == str(tmp_path / "runs" / "x")
    assert storage.normalize("file:///tmp/a") == "/tmp/a"
    assert storage.join("gs://b/x", "y", "z.json") == "gs://b/x/y/z.json"
    assert storage.parent("gs://b/x/y") == "gs://b/x" and storage.basename("gs://b/x/y") == "y"
    assert storage.split_path_list("/a:gs://b/c:ram://d") == ["/a", "gs://b/c", "ram://d"]
    assert storage.is_within("gs://b/x/y", "gs://b/x") and not storage.is_within(
        "gs://b/xy", "gs://b/x")


@pytest.mark.parametrize("where", ["local", "ram"])
def test_write_atomic_leaves_whole_files_only(tmp_path, where):
    root = str(tmp_path) if where == "local" else _ram("w")
    path = storage.join(root, "sub", "f.jsonl")
    storage.write_atomic(path, (f"line {i}\n" for i in range(3)))
    assert storage.read_text(path) == "line 0\nline 1\nline 2\n"

    def failing():
        yield "partial\n"
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        storage.write_atomic(path, failing())
    assert storage.read_text(path) == "line 0\nline 1\nline 2\n"  # the old file, whole
    assert storage.listdir(storage.join(root, "sub")) == ["f.jsonl"]  # no temp file left
    storage.write_json_atomic(storage.join(root, "x.json"), {"a": [1]})
    assert storage.read_json(storage.join(root, "x.json")) == {"a": [1]}


def test_local_files_and_dirs_get_the_modes_of_plain_open_and_mkdir(tmp_path):
    old = os.umask(0o022)
    try:
        storage.write_atomic(str(tmp_path / "f.txt"), "x")
        with outputs.staged_dir(str(tmp_path / "out"), "convert") as build:
            with open(os.path.join(build, "a.txt"), "w") as f:
                f.write("a")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f.txt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "out" / storage.MARKER).st_mode) == 0o644


def test_staged_dir_on_ram_publishes_the_marker_last(monkeypatch):
    """Object stores have no atomic directory rename: files are uploaded, marker last; a
    directory without the marker is incomplete, and readers refuse it."""
    out = _ram("prepared")
    uploaded = []
    real_copy = storage.copy_file

    def recording_copy(src: str, dst: str) -> None:  # the real copy, in upload order
        uploaded.append(storage.basename(dst))
        real_copy(src, dst)

    monkeypatch.setattr(storage, "copy_file", recording_copy)
    with outputs.staged_dir(out, "prepare", record={"dataset": "toy"}) as build:
        os.makedirs(os.path.join(build, "tasks", "t"))
        for rel in ("prepare.json", "tasks/t/info.json"):
            with open(os.path.join(build, rel), "w") as f:
                f.write("{}")
        assert not storage.exists(out)  # nothing visible while the job works
    assert uploaded[-1] == storage.MARKER and set(uploaded) == {"prepare.json", "info.json",
                                                                storage.MARKER}
    marker = outputs.read_marker(out)
    assert marker["job"] == "prepare" and marker["complete"] and marker["dataset"] == "toy"
    outputs.require_complete(out)
    storage.remove(storage.join(out, storage.MARKER))  # as if the upload had been cut short
    with pytest.raises(storage.StorageError, match="incomplete"):
        outputs.require_complete(out)
    assert not [n for n in os.listdir(".") if n.startswith("ram:")]  # nothing local


def test_staged_dir_failure_removes_only_its_own_scratch(tmp_path):
    (tmp_path / "out.tmp").mkdir()
    (tmp_path / "out.tmp" / "keep").write_text("mine")
    with pytest.raises(RuntimeError, match="boom"):
        with outputs.staged_dir(str(tmp_path / "out"), "prepare") as build:
            with open(os.path.join(build, "half"), "w") as f:
                f.write("x")
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["out.tmp"]
    assert (tmp_path / "out.tmp" / "keep").read_text() == "mine"


@pytest.mark.parametrize("where", ["local", "ram"])
def test_claim_dir_accepts_new_empty_and_own_outputs_only(tmp_path, where):
    root = str(tmp_path) if where == "local" else _ram("c")
    new = outputs.claim_dir(storage.join(root, "new"), "eval")
    assert outputs.read_marker(new)["job"] == "eval"
    assert outputs.claim_dir(new, "eval") == new  # its own output
    with pytest.raises(storage.NotOwnedError, match="holds the output of flanrec.eval"):
        outputs.claim_dir(new, "baselines")
    familiar = storage.join(root, "familiar")  # a file name eval writes proves nothing
    storage.write_atomic(storage.join(familiar, "metrics.json"), "{}")
    with pytest.raises(storage.NotOwnedError, match="not written by flanrec.*metrics.json"):
        outputs.claim_dir(familiar, "eval")
    assert storage.read_text(storage.join(familiar, "metrics.json")) == "{}"
    theirs = storage.join(root, "theirs")
    storage.write_atomic(storage.join(theirs, "thesis.txt"), "mine")
    with pytest.raises(storage.NotOwnedError, match="not written by flanrec.*thesis.txt"):
        outputs.claim_dir(theirs, "eval")
    assert storage.listdir(theirs) == ["thesis.txt"]


def test_check_apart_refuses_outputs_that_are_or_hold_inputs(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "log.csv").write_text("u,i\n")
    log = str(tmp_path / "raw" / "log.csv")
    for out in (tmp_path / "raw", tmp_path):
        with pytest.raises(storage.StorageError, match="is or contains the folder holding"):
            outputs.check_apart(str(out), {"--raw_dir": log})
    outputs.check_apart(str(tmp_path / "prepared"), {"--raw_dir": log})  # a sibling is fine
    with pytest.raises(storage.StorageError, match="inside --raw_dir"):
        outputs.check_apart(str(tmp_path / "raw" / "p"), {"--raw_dir": str(tmp_path / "raw")})


def test_local_copy_of_a_ram_tree_and_orbax_schemes(tmp_path):
    root = _ram("tree")
    storage.write_atomic(storage.join(root, "a", "b.txt"), "b")
    storage.write_atomic(storage.join(root, "c.txt"), "c")
    with storage.local_copy(root) as local:
        assert open(os.path.join(local, "a", "b.txt")).read() == "b"
        assert open(os.path.join(local, "c.txt")).read() == "c"
    assert not os.path.exists(local)
    with storage.local_copy(str(tmp_path)) as same:
        assert same == str(tmp_path)
    assert str(storage.orbax_path("gs://b/run")) == "gs://b/run"
    with pytest.raises(storage.StorageError, match="local disk or gs:// only, not ram://"):
        storage.orbax_path(root)
    with pytest.raises(FileNotFoundError):
        storage.read_text(storage.join(root, "missing"))


def test_unreachable_bucket_is_one_clear_error_naming_the_url():
    """No network here: the error must keep the URL whole (today: gs:/...) and be one line."""
    with pytest.raises(storage.StorageError) as e:
        storage.makedirs("gs://flanrec-test-no-such-bucket-7f3a/x")
    assert "gs://flanrec-test-no-such-bucket-7f3a/x" in str(e.value)
    assert "\n" not in str(e.value)


def test_tasks_and_readers_refuse_a_remote_prepared_dir_without_its_marker():
    """On an object store the marker is the only proof that an upload finished."""
    import tasks
    from flanrec.data import prepared

    d = _ram("half-uploaded")
    storage.write_json_atomic(storage.join(d, "prepare.json"),
                              {"format": "flanrec.prepared", "task_prefix": "half"})
    storage.write_atomic(storage.join(d, "split", "split.json"), "{}")
    with pytest.raises(storage.StorageError, match="incomplete: it has no .flanrec-output"):
        tasks.register_prepared(d)
    with pytest.raises(storage.StorageError, match="incomplete"):
        prepared.load_split(d)
