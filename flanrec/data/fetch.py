"""Get a dataset's raw files into a local directory, once, verified, atomically.

``fetch(name, cache_dir)`` returns where the raw files are and which reader
(:func:`flanrec.data.sources.read_dataset` kind) understands them. Order of preference:

1. ``raw_dir`` given by the user: used in place (checked for the required files).
2. The cache: ``cache_dir/<name>/`` with the required files (a completed earlier fetch, or
   files the user put there by hand). A cache hit does no work at all.
3. ml-100k only, offline-friendly: the MovieLens-100K copy inside the ``recbole==1.2.1``
   wheel (RecBole atomic files). Read from an installed ``recbole``, from a wheel file named
   by ``$FLANREC_RECBOLE_WHEEL``, or from ``pip download --no-deps recbole==1.2.1`` (PyPI or
   whatever index pip is configured with). Nothing is installed; the three files are checked
   against pinned sha256 digests.
4. Download from the publisher (GroupLens zips, Amazon review dumps), verified with the
   published MD5 where one exists (see :data:`DATASETS`), extracted into a temporary
   directory next to the cache and moved into place with ``os.replace``: an interrupted
   fetch never leaves a half-written cache entry.

Nothing here runs at training time: ``prepare`` calls it once, training reads prepared data.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from flanrec.data import splits
from flanrec.data.sources import read_dataset
from flanrec.errors import UserError

log = logging.getLogger("flanrec.data.fetch")

MARKER = ".flanrec_fetch.json"

RECBOLE_VERSION = "1.2.1"
RECBOLE_ML100K_MEMBER = "recbole/dataset_example/ml-100k/"
# sha256 of the three files as shipped in recbole-1.2.1-py3-none-any.whl (recorded from the
# wheel on PyPI; the ml100k-loo fingerprints were checked on exactly these bytes).
RECBOLE_ML100K_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
AMAZON_2014 = ("https://snap.stanford.edu/data/amazon/productGraph/categoryFiles",)
AMAZON_2018 = (
    "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2",
    "https://jmcauley.ucsd.edu/data/amazon_v2",
)


class FetchError(UserError, RuntimeError):
    """A dataset could not be made available; the message says what to put where."""


class Fetched(NamedTuple):
    """Where the raw files are, and the ``read_dataset`` kind that reads them."""

    path: Path
    kind: str


@dataclasses.dataclass(frozen=True)
class Layout:
    """One way a dataset's raw files can look: the files a reader needs, and its kind."""

    kind: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    origin: str = ""  # where a user gets these files by hand


@dataclasses.dataclass(frozen=True)
class ZipSpec:
    """A publisher zip: URL and its published MD5 (None: use the ``.md5`` sidecar)."""

    url: str
    md5: str | None


# Published MD5s: GroupLens serves ``<zip>.md5`` next to every archive; these values match
# those sidecars (cross-checked against several independent projects that pin them).
# ml-latest-small changes between releases, so its MD5 is read from the sidecar at download.
DATASETS: dict[str, tuple[tuple[Layout, ...], ZipSpec | None]] = {
    "ml-100k": (
        (
            Layout("recbole", ("ml-100k.inter",), ("ml-100k.item", "ml-100k.user"),
                   f"the recbole=={RECBOLE_VERSION} wheel, {RECBOLE_ML100K_MEMBER}"),
            Layout("ml-100k", ("u.data",), ("u.item", "u.user", "u.genre"),
                   f"{GROUPLENS}/ml-100k.zip"),
        ),
        ZipSpec(f"{GROUPLENS}/ml-100k.zip", "0e33842e24a9c977be4e0107933c0723"),
    ),
    "ml-1m": (
        (Layout("ml-1m", ("ratings.dat",), ("movies.dat", "users.dat"),
                f"{GROUPLENS}/ml-1m.zip"),),
        ZipSpec(f"{GROUPLENS}/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906"),
    ),
    "ml-10m": (
        (Layout("ml-10m", ("ratings.dat",), ("movies.dat",), f"{GROUPLENS}/ml-10m.zip"),),
        ZipSpec(f"{GROUPLENS}/ml-10m.zip", "ce571fd55effeba0271552578f2648bd"),
    ),
    "ml-20m": (
        (Layout("ml-csv", ("ratings.csv",), ("movies.csv",), f"{GROUPLENS}/ml-20m.zip"),),
        ZipSpec(f"{GROUPLENS}/ml-20m.zip", "cd245b17a1ae2cc31bb14903e1204af3"),
    ),
    "ml-25m": (
        (Layout("ml-csv", ("ratings.csv",), ("movies.csv",), f"{GROUPLENS}/ml-25m.zip"),),
        ZipSpec(f"{GROUPLENS}/ml-25m.zip", "6b51fb2759a8657d3bfcbfc42b592ada"),
    ),
    "ml-latest-small": (
        (Layout("ml-csv", ("ratings.csv",), ("movies.csv",),
                f"{GROUPLENS}/ml-latest-small.zip"),),
        ZipSpec(f"{GROUPLENS}/ml-latest-small.zip", None),
    ),
}


def known_names() -> list[str]:
    """Names :func:`fetch` understands (Amazon: ``amazon-2014-<Category>`` etc.)."""
    return sorted(DATASETS) + ["amazon-2014-<Category>", "amazon-2018-<Category>"]


def _amazon(name: str) -> tuple[str, str, Layout, list[tuple[str, list[str]]]] | None:
    """Parse ``amazon-2014-Beauty`` / ``amazon-2018-Video_Games`` into files and URLs."""
    for year, bases in (("2014", AMAZON_2014), ("2018", AMAZON_2018)):
        prefix = f"amazon-{year}-"
        if not name.startswith(prefix) or len(name) == len(prefix):
            continue
        cat = name[len(prefix):]
        if year == "2014":
            reviews, meta = f"reviews_{cat}_5.json.gz", f"meta_{cat}.json.gz"
            urls = [(reviews, [f"{b}/{reviews}" for b in bases]),
                    (meta, [f"{b}/{meta}" for b in bases])]
        else:
            reviews, meta = f"{cat}_5.json.gz", f"meta_{cat}.json.gz"
            urls = [(reviews, [f"{b}/categoryFilesSmall/{reviews}" for b in bases]),
                    (meta, [f"{b}/metaFiles2/{meta}" for b in bases])]
        layout = Layout(f"amazon-{year}", (reviews,), (meta,),
                        " or ".join(u for _, us in urls[:1] for u in us))
        return year, cat, layout, urls
    return None


def _layouts(name: str) -> tuple[Layout, ...]:
    if name in DATASETS:
        return DATASETS[name][0]
    amazon = _amazon(name)
    if amazon is not None:
        return (amazon[2],)
    raise FetchError(f"unknown dataset {name!r}; known: {', '.join(known_names())}")


def _match_layout(directory: Path, layouts: Sequence[Layout]) -> Layout | None:
    for layout in layouts:
        if all((directory / f).is_file() for f in layout.required):
            return layout
    return None


def _missing_message(name: str, cache_dir: Path, layouts: Sequence[Layout],
                     raw_dir: Path | None, why: str) -> str:
    options = "; or ".join(
        f"{', '.join(lay.required + lay.optional)} (from {lay.origin}; "
        f"required: {', '.join(lay.required)})" for lay in layouts
    )
    where = f"{raw_dir} (the raw_dir you passed)" if raw_dir else f"{cache_dir / name}/"
    return (f"{name}: {why}. Put {options} into {where}"
            + ("" if raw_dir else " or pass raw_dir=<a directory holding them>"))


# --------------------------------------------------------------------------- helpers


def _file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_marker(directory: Path, info: dict) -> None:
    info = dict(info, fetched_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    info["sha256"] = {p.name: _file_digest(p, "sha256") for p in sorted(directory.iterdir())
                      if p.is_file() and p.name != MARKER}
    (directory / MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def _publish(tmp: Path, final: Path) -> None:
    """Move a completed temp directory into place; if another process won, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if final.is_dir() and (final / MARKER).exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise


def _download(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Stream ``url`` into ``dest`` (a temp path the caller cleans up on failure)."""
    log.info("downloading %s", url)
    req = urllib.request.Request(url, headers={"User-Agent": "flanrec-fetch"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
        shutil.copyfileobj(resp, out, length=1 << 20)


def _published_md5(spec: ZipSpec) -> str:
    if spec.md5:
        return spec.md5
    req = urllib.request.Request(spec.url + ".md5", headers={"User-Agent": "flanrec-fetch"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read(4096).decode("ascii", "replace")
    # GroupLens sidecars read "MD5 (ml-latest-small.zip) = <hex>"; accept "<hex>  file" too.
    tokens = [t for t in text.replace("=", " ").split() if len(t) == 32]
    hexes = [t for t in tokens if all(c in "0123456789abcdefABCDEF" for c in t)]
    if not hexes:
        raise FetchError(f"{spec.url}.md5: expected an MD5 digest, got {text[:80]!r}")
    return hexes[0].lower()


def _extract_zip_flat(zip_path: Path, dest: Path, origin: str) -> None:
    """Extract regular files, dropping the archive's single top folder (``ml-100k/`` etc.)."""
    with zipfile.ZipFile(zip_path) as zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        split = [Path(m.filename).parts for m in members]
        for m, parts in zip(members, split, strict=True):
            if m.filename.startswith("/") or ".." in parts or not parts:
                raise FetchError(f"{origin}: unsafe path in archive: {m.filename!r}")
        tops = {p[0] for p in split}
        strip = len(tops) == 1 and all(len(p) > 1 for p in split)
        for m, parts in zip(members, split, strict=True):
            target = dest.joinpath(*(parts[1:] if strip else parts))
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)


def _mkdtemp(prefix: str, parent: Path) -> Path:
    """A temp dir next to the cache (same filesystem, so os.replace is atomic), made with
    the usual umask permissions rather than mkdtemp's 0700 so the cache stays shareable."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


# --------------------------------------------------------------------------- recbole wheel


def _recbole_bytes_installed() -> dict[str, bytes] | None:
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if not all((base / f).is_file() for f in RECBOLE_ML100K_SHA256):
        return None
    return {f: (base / f).read_bytes() for f in RECBOLE_ML100K_SHA256}


def _recbole_bytes_from_wheel(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        out = {}
        for f in RECBOLE_ML100K_SHA256:
            member = RECBOLE_ML100K_MEMBER + f
            if member not in names:
                raise FetchError(f"{wheel}: expected member {member} in the recbole wheel")
            out[f] = zf.read(member)
    return out


def _pip_download_recbole(tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(tmp),
           f"recbole=={RECBOLE_VERSION}"]
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    wheels = sorted(tmp.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise FetchError(f"pip download recbole=={RECBOLE_VERSION} failed "
                         f"(exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wheels[0]


def _fetch_ml100k_recbole(final: Path, allow_download: bool) -> Fetched | None:
    """Materialise the wheel's ml-100k atomic files into ``final``; None if impossible."""
    parent = final.parent
    origin = ""
    files = _recbole_bytes_installed()
    if files is not None:
        origin = "installed recbole package"
    env_wheel = os.environ.get("FLANREC_RECBOLE_WHEEL")
    if files is None and env_wheel:
        try:
            files = _recbole_bytes_from_wheel(Path(env_wheel))
        except (OSError, zipfile.BadZipFile) as exc:
            raise FetchError(f"$FLANREC_RECBOLE_WHEEL={env_wheel}: expected a readable "
                             f"recbole-{RECBOLE_VERSION} wheel ({exc})") from None
        origin = f"wheel {env_wheel} ($FLANREC_RECBOLE_WHEEL)"
    wheel_dir = None
    try:
        if files is None and allow_download:
            wheel_dir = Path(tempfile.mkdtemp(prefix=".wheel-", dir=parent))
            try:
                wheel = _pip_download_recbole(wheel_dir)
            except (FetchError, OSError, subprocess.SubprocessError) as exc:
                log.warning("ml-100k via the recbole wheel failed: %s", exc)
                return None
            files = _recbole_bytes_from_wheel(wheel)
            origin = f"pip download recbole=={RECBOLE_VERSION} ({wheel.name})"
        if files is None:
            return None
        for fname, data in files.items():
            got = hashlib.sha256(data).hexdigest()
            if got != RECBOLE_ML100K_SHA256[fname]:
                raise FetchError(f"{origin}: {fname} has sha256 {got}, expected "
                                 f"{RECBOLE_ML100K_SHA256[fname]} (recbole {RECBOLE_VERSION})")
        tmp = _mkdtemp(f".{final.name}-", parent)
        try:
            for fname, data in files.items():
                (tmp / fname).write_bytes(data)
            _write_marker(tmp, {"name": final.name, "kind": "recbole", "origin": origin,
                                "verified": "sha256 pinned in flanrec.data.fetch"})
            _publish(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return Fetched(final, "recbole")
    finally:
        if wheel_dir is not None:
            shutil.rmtree(wheel_dir, ignore_errors=True)


# --------------------------------------------------------------------------- downloads


def _fetch_zip(name: str, spec: ZipSpec, layouts: Sequence[Layout], final: Path) -> Fetched:
    parent = final.parent
    fd, zip_tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".zip", dir=parent)
    os.close(fd)
    zip_path = Path(zip_tmp)
    tmp = _mkdtemp(f".{name}-", parent)
    try:
        _download(spec.url, zip_path)
        expected = _published_md5(spec)
        got = _file_digest(zip_path, "md5")
        if got != expected:
            raise FetchError(f"{spec.url}: MD5 {got} does not match the published {expected}"
                             " (corrupt or changed download; nothing was kept)")
        _extract_zip_flat(zip_path, tmp, spec.url)
        layout = _match_layout(tmp, layouts)
        if layout is None:
            raise FetchError(f"{spec.url}: archive lacks {layouts[0].required}")
        _write_marker(tmp, {"name": name, "kind": layout.kind, "origin": spec.url,
                            "verified": f"md5 {expected} (published by GroupLens)"})
        _publish(tmp, final)
        return Fetched(final, layout.kind)
    finally:
        zip_path.unlink(missing_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_gzip(path: Path, origin: str) -> None:
    """Read a .gz to the end: the gzip CRC catches truncated or corrupt downloads."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (OSError, EOFError) as exc:
        raise FetchError(f"{origin}: downloaded file is not a complete gzip ({exc})") from None


def _fetch_amazon(name: str, final: Path) -> Fetched:
    _, _, layout, urls = _amazon(name)  # type: ignore[misc]
    tmp = _mkdtemp(f".{name}-", final.parent)
    origins = {}
    try:
        for fname, candidates in urls:
            errors = []
            for url in candidates:
                try:
                    _download(url, tmp / fname)
                    _check_gzip(tmp / fname, url)
                    origins[fname] = url
                    break
                except (OSError, FetchError) as exc:
                    errors.append(f"{url}: {exc}")
                    (tmp / fname).unlink(missing_ok=True)
            else:
                if fname in layout.required:
                    raise FetchError(f"{name}: could not download {fname}: "
                                     + "; ".join(errors))
                log.warning("%s: optional %s not downloaded: %s", name, fname, errors)
        _write_marker(tmp, {"name": name, "kind": layout.kind, "origin": origins,
                            "verified": "gzip CRC only: the publisher gives no checksums; "
                                        "sha256 recorded here on first download"})
        _publish(tmp, final)
        return Fetched(final, layout.kind)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- entry point


def fetch(
    name: str,
    cache_dir: str | os.PathLike[str],
    raw_dir: str | os.PathLike[str] | None = None,
    allow_download: bool = True,
) -> Fetched:
    """Make dataset ``name``'s raw files available locally; return ``Fetched(path, kind)``.

    ``name``: one of ``ml-100k``, ``ml-1m``, ``ml-10m``, ``ml-20m``, ``ml-25m``,
    ``ml-latest-small``, ``amazon-2014-<Category>`` (e.g. ``amazon-2014-Beauty``),
    ``amazon-2018-<Category>`` (e.g. ``amazon-2018-Video_Games``).
    ``kind`` is what :func:`flanrec.data.sources.read_dataset` takes for ``path``.
    ``allow_download=False`` never touches the network (raw_dir, cache, installed recbole
    or ``$FLANREC_RECBOLE_WHEEL`` only). Raises :class:`FetchError` saying which files to put
    in which directory when nothing works.
    """
    layouts = _layouts(name)
    cache = Path(cache_dir).expanduser()
    if raw_dir is not None:
        raw = Path(raw_dir).expanduser()
        layout = _match_layout(raw, layouts) if raw.is_dir() else None
        if layout is None:
            why = ("raw_dir lacks the files" if raw.is_dir() else
                   "raw_dir is a file, not a directory" if raw.exists() else
                   "raw_dir does not exist")
            raise FetchError(_missing_message(name, cache, layouts, raw, why))
        return Fetched(raw, layout.kind)
    final = cache / name
    if final.is_dir():
        layout = _match_layout(final, layouts)
        if layout is not None:
            return Fetched(final, layout.kind)
        if (final / MARKER).exists():
            raise FetchError(f"{final}: cache entry is damaged (files missing); delete it")
        if any(final.iterdir()):
            raise FetchError(_missing_message(name, cache, layouts, None,
                                              f"{final} exists but lacks the required files"))
        final.rmdir()  # an empty directory (e.g. made by the user): fill it below
    cache.mkdir(parents=True, exist_ok=True)
    if name == "ml-100k":
        got = _fetch_ml100k_recbole(final, allow_download)
        if got is not None:
            return got
    if not allow_download:
        raise FetchError(_missing_message(name, cache, layouts, None,
                                          "not cached and allow_download=False"))
    try:
        if name in DATASETS and DATASETS[name][1] is not None:
            return _fetch_zip(name, DATASETS[name][1], layouts, final)
        if _amazon(name) is not None:
            return _fetch_amazon(name, final)
    except OSError as exc:  # URLError, timeouts, disk full
        raise FetchError(_missing_message(name, cache, layouts, None,
                                          f"download failed ({exc})")) from exc
    raise FetchError(_missing_message(name, cache, layouts, None, "no download source"))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flanrec.data.fetch NAME [--cache-dir D] [--raw-dir R] [--offline] [--check]``

    Prints ``<path>\t<kind>``; ``--check`` also reads the data, splits it leave-one-out and
    prints the two protocol fingerprints (and, for ml-100k, whether they match the published
    ones: exit status 1 if not).
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flanrec.data.fetch",
                                     description="Fetch a dataset's raw files into a cache.")
    parser.add_argument("name", help=", ".join(known_names()))
    parser.add_argument("--cache-dir", default=os.environ.get("FLANREC_CACHE",
                                                              "~/.cache/flanrec"))
    parser.add_argument("--raw-dir", default=None)
    parser.add_argument("--offline", action="store_true", help="never use the network")
    parser.add_argument("--check", action="store_true",
                        help="read + split and print the ml100k-loo style fingerprints")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    got = fetch(args.name, args.cache_dir, raw_dir=args.raw_dir,
                allow_download=not args.offline)
    print(f"{got.path}\t{got.kind}")
    if args.check:

        split = splits.leave_one_out(read_dataset(got.kind, got.path))
        prints = splits.fingerprints(split)
        n_eval = sum(s.test_item is not None for s in split.users)
        print(f"users {len(split.users)}  evaluated {n_eval}  items {len(split.all_items)}  "
              f"train windows {splits.count_train_windows(split)}")
        for key, value in prints.items():
            print(f"{key} {value}")
        if args.name == "ml-100k":
            ok = prints == splits.ML100K_FINGERPRINTS
            print("ml100k-loo fingerprints:", "MATCH" if ok else "MISMATCH")
            return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
