"""Video decoders behind one switch: decord, PyAV and torchcodec with one reader interface.

``data.decoder`` (pretraining and probe configs) and ``vjepa-fast embed --decoder`` take one of
:data:`DECODERS`. ``auto`` takes the first *working* one of decord, torchcodec, PyAV (decord is the
fastest per core on the bundled clips, PyAV bundles FFmpeg and installs everywhere; torchcodec needs
FFmpeg's shared libraries on the system and, as published on PyPI for Linux, a CUDA build of torch).

Every reader (:func:`open_video`) has the same interface and error behaviour:

* ``len(reader)`` / ``reader.num_frames``: frames in presentation order, counted from the container's
  packet index (not from the header's duration);
* ``reader.fps``: the stream's average frame rate (frames per second, float);
* ``reader.get_batch(indices) -> np.ndarray`` uint8 ``[len(indices), H, W, 3]`` RGB, frames in the
  order asked (repeats allowed);
* ``reader.close()`` (also a context manager). Open it where it is used (inside a DataLoader worker):
  no reader pickles.

A file that cannot be opened or decoded raises :class:`DecodeError` (whatever the library raised is in
the message), so callers skip bad files the same way for every decoder; an index outside
``[0, num_frames)`` is a caller's bug and raises :class:`IndexError`.

H.264 decoding is bit-exact by its specification, so the decoders differ only where they convert
YUV to RGB (FFmpeg build and swscale flags); the measured differences are in the README (Data).
"""
from __future__ import annotations

import bisect
import importlib
from typing import Sequence

import numpy as np

__all__ = [
    "DECODERS",
    "AUTO_ORDER",
    "DecodeError",
    "available_decoders",
    "decoder_version",
    "resolve_decoder",
    "open_video",
]

#: Values of ``data.decoder``.
DECODERS = ("auto", "decord", "pyav", "torchcodec")
#: The order ``auto`` tries.
AUTO_ORDER = ("decord", "torchcodec", "pyav")

_INSTALL = {
    "decord": "pip install decord (wheels for x86-64 Linux, Windows and Intel macOS only)",
    "pyav": "pip install av (bundles FFmpeg)",
    "torchcodec": "pip install torchcodec (needs FFmpeg 4-8 shared libraries, e.g. apt-get install "
                  "libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6, and a torch build it was "
                  "made for)",
}
_MODULE = {"decord": "decord", "pyav": "av", "torchcodec": "torchcodec.decoders"}
_probe_cache: dict[str, str | None] = {}


class DecodeError(Exception):
    """A video file could not be opened or decoded; the message names the decoder, file and cause."""


def _why_unavailable(name: str) -> str | None:
    """None when ``name`` imports and loads its native libraries here, else the reason (cached)."""
    if name not in _probe_cache:
        try:
            importlib.import_module(_MODULE[name])
            _probe_cache[name] = None
        except Exception as e:  # ImportError, and OSError/RuntimeError from native libraries that fail to load
            first = str(e).strip().splitlines()
            _probe_cache[name] = f"{type(e).__name__}: {first[0] if first else ''}"
    return _probe_cache[name]


def available_decoders() -> list[str]:
    """The decoders that work in this environment, in ``auto``'s order of preference."""
    return [n for n in AUTO_ORDER if _why_unavailable(n) is None]


def decoder_version(name: str) -> str | None:
    """Version string of a decoder's library (None when it is not available)."""
    name = resolve_decoder(name) if name == "auto" else name
    if _why_unavailable(name) is not None:
        return None
    mod = importlib.import_module({"decord": "decord", "pyav": "av", "torchcodec": "torchcodec"}[name])
    return str(getattr(mod, "__version__", "unknown"))


def resolve_decoder(name: str, key: str = "data.decoder") -> str:
    """``auto`` -> the first available of :data:`AUTO_ORDER`; a named decoder is checked to work.

    Raises ``ValueError`` for a name outside :data:`DECODERS` and ``ImportError`` (naming ``key``, the
    reason and how to install it) when the chosen decoder is not usable here.
    """
    if name not in DECODERS:
        raise ValueError(f"{key}: unknown decoder {name!r}; choose one of {', '.join(DECODERS)}")
    if name == "auto":
        found = available_decoders()
        if not found:
            reasons = "; ".join(f"{n}: {_why_unavailable(n)}" for n in AUTO_ORDER)
            raise ImportError(f"{key}=auto: no video decoder works here ({reasons}); "
                              f"install one, e.g. {_INSTALL['pyav']}")
        return found[0]
    why = _why_unavailable(name)
    if why is not None:
        raise ImportError(f"{key}={name}: {name} is not usable here ({why}); {_INSTALL[name]}, or set {key}=auto")
    return name


def _short(e: BaseException, n: int = 200) -> str:
    lines = str(e).strip().splitlines()
    s = f"{type(e).__name__}: {lines[-1] if lines else ''}"
    return s if len(s) <= n else s[: n - 3] + "..."


class _Reader:
    decoder = ""

    def __init__(self, path: str):
        self.path = path
        self.num_frames = 0
        self.fps = 0.0

    def __len__(self) -> int:
        return self.num_frames

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):  # a reader holds native state: open one per process instead
        raise TypeError(f"{type(self).__name__} does not pickle; open the video inside the worker")

    def close(self) -> None:
        pass

    def _check(self, indices: Sequence[int]) -> list[int]:
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(f"{self.path}: frame indices {bad[:5]} outside [0, {self.num_frames})")
        return idx

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._check(indices)
        if not idx:
            raise IndexError(f"{self.path}: get_batch needs at least one frame index")
        try:
            out = self._get(idx)
        except (DecodeError, IndexError):
            raise
        except Exception as e:
            raise DecodeError(f"{self.decoder}: decoding frames of {self.path} failed ({_short(e)})") from None
        if out.dtype != np.uint8 or out.ndim != 4 or out.shape[0] != len(idx) or out.shape[-1] != 3:
            raise DecodeError(f"{self.decoder}: {self.path} gave {out.dtype} {out.shape}, "
                              f"expected uint8 [{len(idx)}, H, W, 3]")
        return out

    def _get(self, idx: list[int]) -> np.ndarray:
        raise NotImplementedError


class _DecordReader(_Reader):
    decoder = "decord"

    def __init__(self, path: str, threads: int):
        super().__init__(path)
        import decord  # noqa: PLC0415

        self._vr = decord.VideoReader(path, num_threads=threads, ctx=decord.cpu(0))
        self.num_frames = len(self._vr)
        self.fps = float(self._vr.get_avg_fps())

    def _get(self, idx):
        return self._vr.get_batch(idx).asnumpy()

    def close(self):
        self._vr = None


class _TorchcodecReader(_Reader):
    decoder = "torchcodec"

    def __init__(self, path: str, threads: int):
        super().__init__(path)
        from torchcodec.decoders import VideoDecoder  # noqa: PLC0415

        # "exact" scans the file once, so the frame count comes from the packets, as for the others.
        self._dec = VideoDecoder(path, seek_mode="exact", num_ffmpeg_threads=threads, dimension_order="NHWC")
        md = self._dec.metadata
        self.num_frames = len(self._dec)
        # The header's rate, as decord and PyAV report it (the exact-mode average is frames / span).
        rate = getattr(md, "average_fps_from_header", None) or md.average_fps
        self.fps = float(rate or 0.0)

    def _get(self, idx):
        return self._dec.get_frames_at(indices=idx).data.numpy()

    def close(self):
        self._dec = None


class _PyAVReader(_Reader):
    """Frame-accurate random access with PyAV: the packet index (pts, keyframe flags) is read once at
    open without decoding; ``get_batch`` seeks to the keyframe before each run of wanted frames that
    cannot be reached by decoding on, and keeps the frames whose pts it wants."""

    decoder = "pyav"

    def __init__(self, path: str, threads: int):
        super().__init__(path)
        import av  # noqa: PLC0415

        self._c = av.open(path)
        try:
            if not self._c.streams.video:
                raise DecodeError(f"pyav: {path} has no video stream")
            s = self._c.streams.video[0]
            s.thread_type = "SLICE" if threads > 1 else "NONE"
            s.codec_context.thread_count = threads
            pts, keys = [], []
            for p in self._c.demux(s):
                if p.size == 0 and p.pts is None:
                    continue  # the demuxer's end-of-stream flush packet
                if p.pts is None:
                    raise DecodeError(f"pyav: {path}: a video packet without a timestamp "
                                      "(raw elementary streams are not supported; remux into MP4/MKV)")
                pts.append(int(p.pts))
                if p.is_keyframe:
                    keys.append(int(p.pts))
            self._pts = sorted(pts)
            self._keys = sorted(keys)
            self._stream = s
            self.num_frames = len(self._pts)
            rate = s.average_rate or s.guessed_rate
            self.fps = float(rate) if rate else 0.0
            if self.num_frames and not self._keys:
                raise DecodeError(f"pyav: {path}: no keyframe in the video stream")
        except Exception:
            self._c.close()
            raise

    def _get(self, idx):
        want = sorted(set(idx))
        wanted = set(want)
        frames: dict[int, np.ndarray] = {}
        pos = {p: i for i, p in enumerate(self._pts)}
        it, last = None, None  # decoding iterator and the pts it last produced
        for i in want:
            target = self._pts[i]
            if i in frames:
                continue
            key = self._keys[max(0, bisect.bisect_right(self._keys, target) - 1)]
            if it is None or last is None or key > last or last >= target:
                self._c.seek(key, backward=True, any_frame=False, stream=self._stream)
                it, last = self._c.decode(self._stream), None
            for fr in it:
                if fr.pts is None:
                    raise DecodeError(f"pyav: {self.path}: a decoded frame has no timestamp")
                last = int(fr.pts)
                j = pos.get(last)
                if j in wanted:
                    frames[j] = fr.to_ndarray(format="rgb24")
                if last >= target:
                    break
            if i not in frames:
                raise DecodeError(f"pyav: {self.path}: frame {i} (pts {target}) was not produced by the decoder")
        return np.stack([frames[i] for i in idx])

    def close(self):
        if self._c is not None:
            self._c.close()
            self._c = None


_READERS = {"decord": _DecordReader, "pyav": _PyAVReader, "torchcodec": _TorchcodecReader}


def open_video(path: str, decoder: str = "auto", threads: int = 1) -> _Reader:
    """Open ``path`` with ``decoder`` (see :data:`DECODERS`; ``auto`` resolves once per process).

    ``threads``: decoding threads of this reader (1 in DataLoader workers: parallelism comes from the
    workers). Raises :class:`DecodeError` when the file cannot be opened or has no frames, ``ImportError``
    / ``ValueError`` from :func:`resolve_decoder` for an unusable or unknown decoder name.
    """
    name = resolve_decoder(decoder)
    try:
        reader = _READERS[name](str(path), int(threads))
    except DecodeError:
        raise
    except Exception as e:  # each library raises its own types for broken files
        raise DecodeError(f"{name}: cannot open {path} ({_short(e)})") from None
    if reader.num_frames < 1:
        reader.close()
        raise DecodeError(f"{name}: {path} has no video frames")
    return reader
