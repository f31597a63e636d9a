"""Compressed audio and video files made here with PyAV's encoders (the FFmpeg that the `av`
wheel bundles), so tests need no ffmpeg program: what phones (m4a/AAC), browsers
(webm/Opus), MP3 players and cameras (mp4 with a video track) produce."""
from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np

VIDEO_FPS = 10


@dataclass(frozen=True)
class Encoding:
    name: str  # the usual file extension
    container: str  # FFmpeg's muxer
    codec: str  # FFmpeg's audio encoder
    rate: int | None = None  # the encoder's sample rate; None keeps the input's
    video: bool = False  # also a small mpeg4 video track, as a camera's file has


M4A = Encoding("m4a", "mp4", "aac")
WEBM = Encoding("webm", "webm", "libopus", rate=48000)  # Opus runs at 48 kHz only
MP3 = Encoding("mp3", "mp3", "libmp3lame")
MP4_VIDEO = Encoding("mp4", "mp4", "aac", video=True)
ENCODINGS = (M4A, WEBM, MP3, MP4_VIDEO)


def encode(pcm: np.ndarray, rate: int, encoding: Encoding, video_s: float | None = None) -> bytes:
    """int16 `pcm` at `rate`, [frames] (mono) or [frames, 2] (stereo), encoded as `encoding`;
    its video track (if any) lasts `video_s`, by default as long as the audio."""
    layout = "mono" if pcm.ndim == 1 else "stereo"
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=encoding.container) as out:
        track = out.add_stream(encoding.codec, rate=encoding.rate or rate)
        track.layout = layout
        if encoding.video:  # after add_stream: the first packet muxed fixes the file's tracks
            _add_video(out, seconds=len(pcm) / rate if video_s is None else video_s)
        to_encoder = av.AudioResampler(format=track.format.name, layout=layout, rate=track.rate)
        converted = []
        if len(pcm):  # no samples: a file whose audio track holds nothing
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=layout)  # interleaved
            frame.sample_rate = rate
            converted = to_encoder.resample(frame) + to_encoder.resample(None)
        for piece in converted:
            out.mux(track.encode(piece))
        out.mux(track.encode(None))
    return buffer.getvalue()


def _add_video(out: av.container.OutputContainer, seconds: float) -> None:
    """A 64x48 picture that changes every frame, for as long as the audio lasts."""
    track = out.add_stream("mpeg4", rate=VIDEO_FPS)
    track.width, track.height, track.pix_fmt = 64, 48, "yuv420p"
    for index in range(int(seconds * VIDEO_FPS)):
        picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index * 20 % 256, np.uint8), format="rgb24")
        picture.pts = index
        out.mux(track.encode(picture))
    out.mux(track.encode(None))
