"""fetch(): raw_dir > cache > recbole wheel > publisher download, verified and atomic.

Downloads are exercised for real over HTTP against a server on 127.0.0.1 serving archives
built here (CI has no GroupLens/Amazon access), with the real MD5/gzip verification and
extraction code; only the URL/checksum table entries are pointed at the local server.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import threading
import time
import zipfile
from pathlib import Path

import pytest

from flanrec.data import fetch as fetch_mod
from flanrec.data.fetch import MARKER, Fetched, FetchError, ZipSpec, fetch
from flanrec.data.sources import read_dataset

DATA = Path(__file__).parent / "data"


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """Serve tmp_path/www on 127.0.0.1; yields (root_dir, base_url)."""
    root = tmp_path / "www"
    root.mkdir()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def _zip(path: Path, files: dict[str, bytes]) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    path.write_bytes(buf.getvalue())
    return hashlib.md5(buf.getvalue()).hexdigest()


# --------------------------------------------------------------------------- ml-100k / wheel


def test_ml100k_cache_holds_the_pinned_wheel_files(ml100k_dir):
    for name, digest in fetch_mod.RECBOLE_ML100K_SHA256.items():
        assert hashlib.sha256((ml100k_dir / name).read_bytes()).hexdigest() == digest
    info = json.loads((ml100k_dir / MARKER).read_text())
    assert info["kind"] == "recbole" and info["sha256"] == fetch_mod.RECBOLE_ML100K_SHA256


def test_second_call_does_no_work(ml100k_dir, monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("a cached fetch must not download")

    monkeypatch.setattr(fetch_mod, "_pip_download_recbole", boom)
    monkeypatch.setattr(fetch_mod, "_download", boom)
    start = time.perf_counter()
    got = fetch("ml-100k", ml100k_dir.parent)
    assert got == Fetched(ml100k_dir, "recbole")
    assert time.perf_counter() - start < 0.05


def test_fresh_fetch_through_pip_download(tmp_path, monkeypatch):
    """The real offline path: pip download the wheel, read 3 files out of it, install nothing."""
    monkeypatch.delenv("FLANREC_RECBOLE_WHEEL", raising=False)
    start = time.perf_counter()
    try:
        got = fetch("ml-100k", tmp_path / "cache")
    except FetchError as exc:
        pytest.skip(f"PyPI not reachable: {exc}")
    assert time.perf_counter() - start < 30
    assert got.kind == "recbole"
    info = json.loads((got.path / MARKER).read_text())
    assert info["origin"].startswith("pip download recbole==1.2.1")
    assert sorted(p.name for p in got.path.iterdir()) == sorted(
        [MARKER, "ml-100k.inter", "ml-100k.item", "ml-100k.user"])
    assert _leftovers(tmp_path / "cache") == ["ml-100k"]  # no temp dirs or wheels left


def _fake_wheel(path: Path, src: Path, tamper: bool = False) -> Path:
    files = {}
    for name in fetch_mod.RECBOLE_ML100K_SHA256:
        data = (src / name).read_bytes()
        if tamper and name.endswith(".inter"):
            data = data.replace(b"881250949", b"881250950", 1)
        files[fetch_mod.RECBOLE_ML100K_MEMBER + name] = data
    _zip(path, files)
    return path


def test_local_wheel_offline_and_tampered_wheel_refused(ml100k_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FLANREC_RECBOLE_WHEEL",
                       str(_fake_wheel(tmp_path / "bad.whl", ml100k_dir, tamper=True)))
    with pytest.raises(FetchError, match=r"ml-100k.inter has sha256 .* expected 4edb74e2"):
        fetch("ml-100k", cache, allow_download=False)
    assert _leftovers(cache) == []
    monkeypatch.setenv("FLANREC_RECBOLE_WHEEL",
                       str(_fake_wheel(tmp_path / "good.whl", ml100k_dir)))
    got = fetch("ml-100k", cache, allow_download=False)
    assert got == Fetched(cache / "ml-100k", "recbole")
    assert len(read_dataset(got.kind, got.path).interactions) == 100_000


def test_raw_dir_wins_and_missing_files_are_named(ml100k_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in ("u.data", "u.item", "u.user"):
        (raw / f).write_bytes((DATA / "ml100k_grouplens" / f).read_bytes())
    # the cache already has ml-100k (recbole files); the user's raw_dir still wins
    assert fetch("ml-100k", ml100k_dir.parent, raw_dir=raw) == Fetched(raw, "ml-100k")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FetchError) as exc:
        fetch("ml-100k", tmp_path / "cache", raw_dir=empty)
    msg = str(exc.value)
    assert "u.data" in msg and "ml-100k.inter" in msg and str(empty) in msg


def test_offline_without_data_says_which_files_go_where(tmp_path, monkeypatch):
    monkeypatch.delenv("FLANREC_RECBOLE_WHEEL", raising=False)
    cache = tmp_path / "cache"
    with pytest.raises(FetchError) as exc:
        fetch("ml-100k", cache, allow_download=False)
    msg = str(exc.value)
    assert "not cached and allow_download=False" in msg
    assert "ml-100k.inter, ml-100k.item, ml-100k.user" in msg
    assert "u.data, u.item, u.user" in msg and f"{cache / 'ml-100k'}/" in msg
    with pytest.raises(FetchError, match="ratings.dat, movies.dat, users.dat"):
        fetch("ml-1m", cache, allow_download=False)
    with pytest.raises(FetchError, match="unknown dataset 'ml-3m'"):
        fetch("ml-3m", cache)
    # files put into the cache by hand count as cached
    (cache / "ml-1m").mkdir(parents=True)
    (cache / "ml-1m" / "ratings.dat").write_text("1::2::3::4\n")
    assert fetch("ml-1m", cache, allow_download=False) == Fetched(cache / "ml-1m", "ml-1m")


# --------------------------------------------------------------------------- GroupLens zips


ML1M_FILES = {
    "ml-1m/ratings.dat": b"1::1193::5::978300760\n2::661::3::978302109\n",
    "ml-1m/movies.dat": b"1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n",
    "ml-1m/users.dat": b"1::F::1::10::48067\n",
    "ml-1m/README": b"readme\n",
}


def test_grouplens_zip_download_verified_and_flattened(http_root, tmp_path, monkeypatch):
    root, base = http_root
    md5 = _zip(root / "ml-1m.zip", ML1M_FILES)
    layouts = fetch_mod.DATASETS["ml-1m"][0]
    cache = tmp_path / "cache"
    monkeypatch.setitem(fetch_mod.DATASETS, "ml-1m", (layouts, ZipSpec(f"{base}/ml-1m.zip",
                                                                       "0" * 32)))
    with pytest.raises(FetchError, match=r"MD5 [0-9a-f]{32} does not match the published 0{32}"):
        fetch("ml-1m", cache)
    assert _leftovers(cache) == []  # nothing half-written
    monkeypatch.setitem(fetch_mod.DATASETS, "ml-1m", (layouts, ZipSpec(f"{base}/ml-1m.zip",
                                                                       md5)))
    got = fetch("ml-1m", cache)
    assert got == Fetched(cache / "ml-1m", "ml-1m")
    assert sorted(p.name for p in got.path.iterdir()) == sorted(
        [MARKER, "README", "movies.dat", "ratings.dat", "users.dat"])
    info = json.loads((got.path / MARKER).read_text())
    assert info["origin"] == f"{base}/ml-1m.zip" and md5 in info["verified"]
    ds = read_dataset(got.kind, got.path)
    assert ds.items.title["1193"] == "One Flew Over the Cuckoo's Nest"
    (root / "ml-1m.zip").unlink()  # second call: served from the cache, no network
    assert fetch("ml-1m", cache) == got
    assert _leftovers(cache) == ["ml-1m"]


def test_md5_sidecar_used_when_no_checksum_is_pinned(http_root, tmp_path, monkeypatch):
    root, base = http_root
    md5 = _zip(root / "ml-latest-small.zip", {
        "ml-latest-small/ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n",
        "ml-latest-small/movies.csv": b"movieId,title,genres\n1,Toy Story (1995),Comedy\n"})
    layouts = fetch_mod.DATASETS["ml-latest-small"][0]
    monkeypatch.setitem(fetch_mod.DATASETS, "ml-latest-small",
                        (layouts, ZipSpec(f"{base}/ml-latest-small.zip", None)))
    (root / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {'f' * 32}\n")
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match="does not match the published f{32}"):
        fetch("ml-latest-small", cache)
    (root / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {md5}\n")
    got = fetch("ml-latest-small", cache)
    assert got.kind == "ml-csv"
    assert read_dataset(got.kind, got.path).items.title["1"] == "Toy Story"


def test_unsafe_zip_member_refused(http_root, tmp_path, monkeypatch):
    root, base = http_root
    md5 = _zip(root / "ml-1m.zip", {"../evil.dat": b"x", "ml-1m/ratings.dat": b"1::2::3::4\n"})
    layouts = fetch_mod.DATASETS["ml-1m"][0]
    monkeypatch.setitem(fetch_mod.DATASETS, "ml-1m",
                        (layouts, ZipSpec(f"{base}/ml-1m.zip", md5)))
    with pytest.raises(FetchError, match="unsafe path in archive"):
        fetch("ml-1m", tmp_path / "cache")
    assert not (tmp_path / "evil.dat").exists()
    assert _leftovers(tmp_path / "cache") == []


def test_ml100k_falls_back_to_grouplens_when_pypi_fails(http_root, tmp_path, monkeypatch):
    root, base = http_root
    monkeypatch.delenv("FLANREC_RECBOLE_WHEEL", raising=False)

    def no_pypi(tmp):
        raise FetchError("pip download recbole==1.2.1 failed (exit 1): no network")

    monkeypatch.setattr(fetch_mod, "_pip_download_recbole", no_pypi)
    files = {f"ml-100k/{f}": (DATA / "ml100k_grouplens" / f).read_bytes()
             for f in ("u.data", "u.item", "u.user")}
    md5 = _zip(root / "ml-100k.zip", files)
    layouts = fetch_mod.DATASETS["ml-100k"][0]
    monkeypatch.setitem(fetch_mod.DATASETS, "ml-100k",
                        (layouts, ZipSpec(f"{base}/ml-100k.zip", md5)))
    got = fetch("ml-100k", tmp_path / "cache")
    assert got == Fetched(tmp_path / "cache" / "ml-100k", "ml-100k")
    assert read_dataset(got.kind, got.path).items.title["543"] == "Misérables, Les"
    assert _leftovers(tmp_path / "cache") == ["ml-100k"]


# --------------------------------------------------------------------------- Amazon


def _gz_bytes(lines: list[dict]) -> bytes:
    return gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode())


def test_amazon_2018_download_gzip_checked(http_root, tmp_path, monkeypatch):
    root, base = http_root
    (root / "categoryFilesSmall").mkdir()
    (root / "metaFiles2").mkdir()
    review = {"reviewerID": "A1", "asin": "B1", "overall": 5.0, "unixReviewTime": 1445040000}
    data = _gz_bytes([review, dict(review, asin="B2")])
    (root / "categoryFilesSmall" / "Software_5.json.gz").write_bytes(data[:-12])  # truncated
    monkeypatch.setattr(fetch_mod, "AMAZON_2018", (base,))
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match="not a complete gzip"):
        fetch("amazon-2018-Software", cache)
    assert _leftovers(cache) == []
    (root / "categoryFilesSmall" / "Software_5.json.gz").write_bytes(data)
    # the metadata file is optional: a 404 is logged, the reviews are kept
    got = fetch("amazon-2018-Software", cache)
    assert got == Fetched(cache / "amazon-2018-Software", "amazon-2018")
    info = json.loads((got.path / MARKER).read_text())
    assert "no checksums" in info["verified"]
    assert info["sha256"]["Software_5.json.gz"] == hashlib.sha256(data).hexdigest()
    ds = read_dataset(got.kind, got.path)
    assert ds.interactions.item.tolist() == ["B1", "B2"] and ds.items.title["B1"] == "item B1"


# --------------------------------------------------------------------------- CLI


def test_cli_check_prints_matching_fingerprints(ml100k_dir, capsys, monkeypatch):
    monkeypatch.setattr(fetch_mod, "_pip_download_recbole", None)  # must stay offline
    rc = fetch_mod.main(["ml-100k", "--cache-dir", str(ml100k_dir.parent), "--offline",
                         "--check"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[0] == f"{ml100k_dir}\trecbole"
    assert "users 943  evaluated 943  items 1682  train windows 97171" in out
    assert "ml100k-loo fingerprints: MATCH" in out


def test_bad_local_wheel_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("FLANREC_RECBOLE_WHEEL", str(tmp_path / "missing.whl"))
    with pytest.raises(FetchError, match=r"FLANREC_RECBOLE_WHEEL=.*missing.whl: expected a "
                                         "readable recbole-1.2.1 wheel"):
        fetch("ml-100k", tmp_path / "cache", allow_download=False)
