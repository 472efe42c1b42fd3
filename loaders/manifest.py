"""Manifests: the list of samples a run trains on, one JSON object per line.

    {"class_names": ["Moving something up", ...]}                       optional header line
    {"uri": "/data/ssv2/videos/1.webm", "label": 2, "num_frames": 48, "fps": 12.0, "duration": 4.0,
     "codec": "vp9"}
    {"uri": "s3://bucket/imagenet/train/circle/circle_000001.JPEG", "label": 0, "num_frames": 1,
     "fps": 0.0, "duration": 0.0, "codec": "jpeg"}                      an image
    {"uri": "/data/clips/a.mp4", "label": -1, ...}                      unlabelled (flat layout)

codec is FFmpeg's name for a video's stream ("vp9", "h264", ...) or PIL's for an image; it is
optional (manifests written before it existed lack it), and lets the loader pick a decoder per
item without opening the file.

A uri is an absolute local path, a URL (s3://, gs://, http(s)://, anything fsspec opens) or a path
relative to the manifest's own folder. Reading goes through fsspec, so a manifest can itself live
in an object store; `.gz` manifests are decompressed on the fly. Knowing frame counts and rates up
front lets the sampler pick a clip window without opening the video.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import av
import fsspec
from PIL import Image
from tqdm import tqdm

from loaders.errors import DataError
from loaders.redact import redact

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
VIDEO_SUFFIXES = frozenset({".webm", ".mp4", ".mkv", ".avi", ".mov", ".m4v"})
LAYOUTS = ("auto", "ssv2", "imagenet", "folder", "flat")


@dataclass(frozen=True)
class ManifestEntry:
    """One sample. Images have num_frames=1, fps=0, duration=0; label -1 means unknown.
    codec: the stream's codec ("vp9", "h264", "jpeg", ...), None where the manifest predates it."""

    uri: str
    label: int
    num_frames: int
    fps: float
    duration: float
    codec: str | None = None

    @property
    def is_image(self) -> bool:
        return self.num_frames == 1 and self.fps == 0

    @classmethod
    def from_dict(cls, d: dict) -> "ManifestEntry":
        """Build from a parsed JSON object; raises ValueError naming the bad field. Extra keys
        are ignored so that other tools may add their own."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        missing = [k for k in ("uri", "label", "num_frames", "fps", "duration") if k not in d]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        uri, label, num_frames, fps, duration = (d["uri"], d["label"], d["num_frames"], d["fps"],
                                                 d["duration"])
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"uri must be a non-empty string, got {uri!r}")
        for name, value in (("label", label), ("num_frames", num_frames)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name, value in (("fps", fps), ("duration", duration)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if label < -1:
            raise ValueError(f"label must be >= -1 (-1 = unknown), got {label}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        codec = d.get("codec")
        if codec is not None and (not isinstance(codec, str) or not codec):
            raise ValueError(f"codec must be a non-empty string, got {codec!r}")
        return cls(uri, label, num_frames, float(fps), float(duration), codec)

    def to_dict(self) -> dict:
        """The JSON object of one manifest line (no codec key where it is unknown)."""
        d = asdict(self)
        if d["codec"] is None:
            del d["codec"]
        return d


@dataclass
class Manifest(Sequence[ManifestEntry]):
    """A list of entries plus, optionally, the class names that labels index."""

    entries: list[ManifestEntry] = field(default_factory=list)
    class_names: list[str] | None = None

    @property
    def num_classes(self) -> int:
        """len(class_names) when known, else one more than the largest label."""
        if self.class_names is not None:
            return len(self.class_names)
        return max((e.label for e in self.entries), default=-1) + 1

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Manifest(self.entries[index], self.class_names)
        return self.entries[index]

    def __iter__(self) -> Iterator[ManifestEntry]:
        return iter(self.entries)


def _has_scheme(uri: str) -> bool:
    return "://" in uri


def resolve_uri(uri: str, base: str) -> str:
    """A relative uri resolved against the folder `base` (a local path or URL) of the file naming it."""
    if _has_scheme(uri) or os.path.isabs(uri):
        return uri
    if _has_scheme(base):
        return posixpath.join(base, uri)
    return os.path.normpath(os.path.join(base, uri))


def parent_folder(path_or_url: str) -> str:
    """The folder holding a local path (made absolute) or a URL."""
    if _has_scheme(path_or_url):
        return path_or_url.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path_or_url))


def parse_json_lines(path_or_url: str | os.PathLike, handle: Callable[[Any], None], *,
                     storage_options: dict | None = None) -> None:
    """handle(value) for the JSON value of every non-blank line of a local file or fsspec URL (`.gz`
    decompressed on the fly); bad JSON, or a ValueError of handle, raises ValueError("<path>:<line>: ...")."""
    path = os.fspath(path_or_url)
    with fsspec.open(path, "rt", encoding="utf-8", compression="infer",
                     **(storage_options or {})) as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                handle(json.loads(line))
            except ValueError as error:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{number}: {error}") from None


def read_manifest(path_or_url: str | os.PathLike, *, storage_options: dict | None = None,
                  resolve_relative: bool = True) -> Manifest:
    """Read a JSON-lines manifest from a local path or any fsspec URL (s3://, http://, ...).

    Blank lines are skipped; a first line with "class_names" and no "uri" is the header. Relative
    uris are resolved against the manifest's folder unless resolve_relative is False. A bad line
    raises ValueError("<path>:<line>: <reason>").
    """
    base = parent_folder(os.fspath(path_or_url))
    entries: list[ManifestEntry] = []
    class_names = None

    def handle(obj) -> None:
        nonlocal class_names
        if not entries and class_names is None and isinstance(obj, dict) \
                and "class_names" in obj and "uri" not in obj:
            names = obj["class_names"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError("class_names must be a list of strings")
            class_names = names
            return
        entry = ManifestEntry.from_dict(obj)
        if class_names is not None and entry.label >= len(class_names):
            raise ValueError(f"label {entry.label} out of range for "
                             f"{len(class_names)} class names")
        if resolve_relative:
            entry = replace(entry, uri=resolve_uri(entry.uri, base))
        entries.append(entry)

    parse_json_lines(path_or_url, handle, storage_options=storage_options)
    return Manifest(entries, class_names)


def write_manifest(entries: Manifest | Iterable[ManifestEntry], path: str | os.PathLike, *,
                   class_names: Sequence[str] | None = None,
                   storage_options: dict | None = None) -> str:
    """Write entries as JSON lines (header first when class names are known); returns the path.

    class_names defaults to the Manifest's own. A local file is written under a temporary name
    and renamed, so readers never see half a manifest.
    """
    if class_names is None and isinstance(entries, Manifest):
        class_names = entries.class_names
    lines = []
    if class_names is not None:
        lines.append(json.dumps({"class_names": list(class_names)}))
    lines.extend(json.dumps(e.to_dict()) for e in entries)
    return write_file(path, ("\n".join(lines) + "\n").encode("utf-8"), storage_options=storage_options)


def write_file(path: str | os.PathLike, data: bytes, *, storage_options: dict | None = None) -> str:
    """Write `data` to a local path or any fsspec URL; returns the path. A local file is written under
    a temporary name and renamed (readers never see half of it); an object store's PUT is atomic."""
    path = os.fspath(path)
    if _has_scheme(path) and not path.startswith("file://"):
        with fsspec.open(path, "wb", **(storage_options or {})) as f:
            f.write(data)
        return path
    local = Path(path.removeprefix("file://"))
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, local)
    return path


# ---------------------------------------------------------------------------------------------
# Probing
# ---------------------------------------------------------------------------------------------


class VideoInfo(NamedTuple):
    """What indexing knows of a video: frames it decoded, their rate, duration, codec."""

    num_frames: int
    fps: float
    duration: float  # num_frames / fps: what can be decoded, not what the header claims
    codec: str  # FFmpeg's name: "vp9", "h264", ...


# FFmpeg opens a still image as a one-stream "video" through these demuxers (an image named .webm).
_IMAGE_DEMUXERS = ("image2", "_pipe")


def probe_video(source: str | os.PathLike | bytes | bytearray | memoryview,
                storage_options: dict | None = None) -> VideoInfo:
    """Decode every frame of the first video stream and describe what decoded.

    Frames are counted as the decoders count them (loaders.decode: presentation order, frames
    with a negative timestamp skipped), so a manifest never promises a frame the loader cannot
    get: a truncated file counts the frames before the cut, whatever its header's duration says.
    Raises ValueError (one line) for what is not a video: no video stream (audio only), an image
    (FFmpeg's image demuxers), fewer than 2 decodable frames, a decode error, no frame rate.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        file = io.BytesIO(bytes(source))
    else:
        source = os.fspath(source)
        file = fsspec.open(source, "rb", **(storage_options or {})).open() \
            if _has_scheme(source) else open(source, "rb")
    try:
        with av.open(file, "r") as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context.codec.canonical_name
            demuxer = container.format.name
            if demuxer.endswith(_IMAGE_DEMUXERS):
                raise ValueError(f"not a video: an image ({codec}, read by FFmpeg's {demuxer})")
            stream.thread_type = "AUTO"
            count, first_pts, last_pts = 0, None, None
            try:
                for frame in container.decode(stream):
                    if frame.pts is not None and frame.pts < 0:
                        continue  # not shown; the decoders skip it too
                    if frame.pts is not None:
                        first_pts = frame.pts if first_pts is None else first_pts
                        last_pts = frame.pts
                    count += 1
            except av.error.FFmpegError as error:
                raise ValueError(f"decode failed after {count} frames: {error}") from None
            if count < 2:
                raise ValueError(f"{count} decodable frame{'s' * (count != 1)}; "
                                 "a video needs at least 2")
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            if fps <= 0 and stream.time_base and last_pts is not None and last_pts > first_pts:
                fps = (count - 1) / float((last_pts - first_pts) * stream.time_base)
            if fps <= 0:
                raise ValueError("no frame rate")
            return VideoInfo(count, fps, count / fps, codec)
    finally:
        file.close()


def probe_image(source: str | os.PathLike | bytes | bytearray | memoryview) -> str:
    """The image's format ("jpeg", "png", ...) from a local path or its bytes; raises if PIL cannot
    parse it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    with Image.open(source) as image:
        image.verify()  # parses headers and structure without decoding every pixel
        return (image.format or "unknown").lower()


# ---------------------------------------------------------------------------------------------
# Indexing a folder
# ---------------------------------------------------------------------------------------------


@dataclass
class IndexResult:
    """index_folder's answer: the manifest, the files it skipped (uri, reason) and the layout."""

    manifest: Manifest
    skipped: list[tuple[str, str]]
    layout: str
    out: str | None = None


def _first_existing(candidates: Iterable[Path]) -> Path | None:
    return next((p for p in candidates if p.exists()), None)


def _ssv2_files(root: Path, split: str) -> tuple[Path | None, Path | None]:
    """(labels.json, <split>.json) in our layout or the official one (labels/something-...)."""
    official = {"train": "train", "validation": "validation", "test": "test"}[split]
    folders = [root, root / "labels"]
    labels = _first_existing(f / n for f in folders
                             for n in ("labels.json", "something-something-v2-labels.json"))
    split_file = _first_existing(f / n for f in folders for n in
                                 (f"{split}.json", f"something-something-v2-{official}.json"))
    return labels, split_file


def _normalize_split(split: str) -> str:
    aliases = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
    if split not in aliases:
        raise ValueError(f"unknown split {split!r}; expected train, val, validation or test")
    return aliases[split]


def _detect_layout(root: Path, split: str) -> str:
    """ssv2 if a labels json is found; flat if the split's folder (or root) holds media files
    and no class folders; imagenet if train/ or val/ exists; else folder."""
    if _ssv2_files(root, split)[0] is not None:  # a labels json
        return "ssv2"
    base = _split_folder(root, split) or root
    if not _class_folders(base) and _media_files(base):
        return "flat"
    if any((root / d).is_dir() for d in ("train", "val", "validation")):
        return "imagenet"
    return "folder"


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _media_files(folder: Path) -> list[Path]:
    found = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
    return sorted(found)


def _ssv2_items(root: Path, split: str) -> tuple[list[tuple[Path, int]], list[str],
                                                 list[tuple[str, str]]]:
    labels_path, split_path = _ssv2_files(root, split)
    if labels_path is None or split_path is None:
        raise ValueError(f"{root}: not an SSv2 layout for split {split!r} (need labels.json and "
                         f"{split}.json, or the official something-something-v2-*.json)")
    try:
        labels = json.loads(labels_path.read_text())
        records = json.loads(split_path.read_text())
        class_names = [name for name, _ in sorted(labels.items(), key=lambda kv: int(kv[1]))]
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{labels_path} or {split_path}: malformed SSv2 JSON ({error})") from None
    if [int(labels[n]) for n in class_names] != list(range(len(class_names))):
        raise ValueError(f"{labels_path}: class indices must be 0..{len(class_names) - 1}")
    video_dir = _first_existing([root / "videos", root / "20bn-something-something-v2"]) or root
    by_id = {p.stem: p for p in video_dir.iterdir()
             if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES}
    items, skipped = [], []
    for position, record in enumerate(records):
        vid = str(record.get("id", "")) if isinstance(record, dict) else ""
        path = by_id.get(vid)
        if path is None:
            skipped.append((str(video_dir / f"{vid or '?'}"),
                            f"{split_path.name} item {position}: no video file for id {vid!r}"))
            continue
        if "template" in record:
            name = record["template"].replace("[", "").replace("]", "")
            if name not in labels:
                skipped.append((str(path), f"template {record['template']!r} not in "
                                           f"{labels_path.name}"))
                continue
            label = int(labels[name])
        else:
            label = -1  # the test split has no labels
        items.append((path, label))
    return items, class_names, skipped


_SPLIT_FOLDERS = {"train": ("train",), "validation": ("val", "validation"), "test": ("test",)}


def _split_folder(root: Path, split: str) -> Path | None:
    return _first_existing(root / n for n in _SPLIT_FOLDERS[split] if (root / n).is_dir())


def _folder_items(root: Path, split: str, layout: str) -> tuple[list[tuple[Path, int]],
                                                                list[str] | None]:
    base = _split_folder(root, split)
    if layout == "flat":  # unlabelled (pretraining): every media file below, label -1
        return [(p, -1) for p in _media_files(base or root)], None
    if layout == "imagenet":
        if base is None:
            names = _SPLIT_FOLDERS[split]
            raise ValueError(f"{root}: no {' or '.join(names)} folder for split {split!r}")
        # Class indices come from train's folders when present, so val labels match train's.
        class_names = _class_folders(root / "train" if (root / "train").is_dir() else base)
    else:
        base = base or root
        class_names = _class_folders(base)
    if not class_names:
        raise ValueError(f"{base}: no class folders (--layout flat indexes unlabelled files)")
    items = []
    for label, name in enumerate(class_names):
        folder = base / name
        if folder.is_dir():
            items.extend((p, label) for p in _media_files(folder)
                         if layout != "imagenet" or p.suffix.lower() in IMAGE_SUFFIXES)
    return items, class_names


def probe_entry(source: Path | bytes, label: int, uri: str, *, image: bool) -> ManifestEntry | tuple[str, str]:
    """The manifest entry of one image or video (a local path or its bytes) named `uri`, or
    (uri, reason) when it is not what its name says (see probe_video; never raises)."""
    try:
        if image:
            return ManifestEntry(uri, label, 1, 0.0, 0.0, probe_image(source))
        info = probe_video(source)
        return ManifestEntry(uri, label, info.num_frames, info.fps, info.duration, info.codec)
    except Exception as error:  # any unreadable file is reported, never fatal
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return uri, f"{type(error).__name__}: {reason}"


def index_folder(root: str | os.PathLike, layout: str = "auto", split: str = "train", *,
                 base_url: str | None = None, relative: bool = False,
                 out: str | os.PathLike | None = None, workers: int = 4,
                 progress: bool = False, allow_empty: bool = False) -> IndexResult:
    """Probe every sample of one split under `root` and build its manifest.

    layout:
      ssv2      labels.json + <split>.json (or labels/something-something-v2-*.json) and videos
                in videos/ or 20bn-something-something-v2/; labels from the templates
      imagenet  <split>/<class>/<image>; class indices are the sorted folder names of train/
      folder    <class>/<image or video> under <root>/<split> if it exists, else under <root>
      flat      every image or video below <root>/<split> if it exists, else below <root>,
                unlabelled (label -1, no class names): pretraining data
      auto      ssv2 if a labels json is found; flat if that folder holds media files and no
                class folders; imagenet if train/ or val/ exists; else folder
    split: train, val (= validation) or test. uris are absolute local paths; with base_url they
    are base_url + the path below root (point a manifest at a copy in s3://bucket/...); with
    relative they are relative to the manifest's folder (`out`'s, else root). Files that are not
    what their suffix says (see probe_video: an image named .mp4, one frame, audio only, a decode
    error) go to `skipped` as (uri, reason); raises DataError when nothing is left to write (unless
    allow_empty and nothing was skipped: a split that is empty on purpose). `out` writes the
    manifest there.
    Files are probed by `workers` threads (probing is mostly reading, and PyAV releases the GIL).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    split = _normalize_split(split)
    if layout == "auto":
        layout = _detect_layout(root, split)
    skipped: list[tuple[str, str]] = []
    if layout == "ssv2":
        items, class_names, skipped = _ssv2_items(root, split)
    else:
        items, class_names = _folder_items(root, split, layout)

    anchor = Path(out).resolve().parent if out is not None else root.resolve()

    def uri_of(path: Path) -> str:
        if base_url is not None:
            below = path.resolve().relative_to(root.resolve()).as_posix()
            return base_url.rstrip("/") + "/" + below
        if relative:
            return Path(os.path.relpath(path.resolve(), anchor)).as_posix()
        return str(path.resolve())

    jobs = [(path, label, uri_of(path)) for path, label in items]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(lambda job: probe_entry(*job, image=job[0].suffix.lower() in IMAGE_SUFFIXES),
                                     jobs), total=len(jobs),
                            desc=f"index {split}", unit="file",
                            disable=None if progress else True))  # None: no bar off a terminal
    entries = [r for r in results if isinstance(r, ManifestEntry)]
    skipped.extend(r for r in results if not isinstance(r, ManifestEntry))
    if not entries and not (allow_empty and not skipped):  # a run would only fail on it later
        first = f"; first: {redact(skipped[0][0])}: {skipped[0][1]}" if skipped else ""
        raise DataError(f"{redact(str(root))}: nothing to index for split {split!r} ({layout} "
                        f"layout): {len(skipped)} file{'s' * (len(skipped) != 1)} skipped{first}")
    manifest = Manifest(entries, class_names)
    written = write_manifest(manifest, out) if out is not None else None
    return IndexResult(manifest, skipped, layout, written)
