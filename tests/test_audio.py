"""load_audio and resample: formats, rates, downmixing, resampler quality and errors."""

import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_runtime.audio import AudioError, load_audio, pcm_frames, resample

TARGET = 16000


def _tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


def _middle(audio: np.ndarray) -> np.ndarray:
    # Skip the edges, where the resampler's zero padding fades the signal in and out.
    edge = len(audio) // 10
    return audio[edge:-edge]


def _level_db(audio: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(audio, dtype=np.float64)) + 1e-30))


def _peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(spectrum.argmax() * rate / len(audio))


def _band_db(audio: np.ndarray, rate: int, low: float, high: float) -> float:
    """Energy between low and high Hz, in dB relative to the whole spectrum."""
    power = np.abs(np.fft.rfft(audio * np.hanning(len(audio)))) ** 2
    hz = np.fft.rfftfreq(len(audio), 1 / rate)
    return float(10 * np.log10(power[(hz >= low) & (hz <= high)].sum() / power.sum() + 1e-30))


def _pcm16_wav(samples: np.ndarray, rate: int, data_size: int | None = None) -> bytes:
    """A mono 16-bit WAV built by hand, with an odd-sized chunk before the data chunk."""
    data = samples.astype("<i2").tobytes()
    body = (
        b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"junk" + struct.pack("<I", 3) + b"abc\0"
        + b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


# -- files and bytes ---------------------------------------------------------------

FORMATS = [("WAV", "PCM_16", "wav"), ("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg")]


@pytest.mark.parametrize("rate", [16000, 44100, 48000, 8000])
@pytest.mark.parametrize(("container", "subtype", "ext"), FORMATS)
def test_file_round_trip(tmp_path: Path, container: str, subtype: str, ext: str, rate: int) -> None:
    source = _tone(1000.0, rate)
    path = tmp_path / f"tone.{ext}"
    sf.write(path, source, rate, format=container, subtype=subtype)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == -(-len(source) * TARGET // rate)
    assert abs(_peak_hz(audio, TARGET) - 1000.0) <= 1.0
    tolerance = 0.5 if container == "OGG" else 0.1
    assert abs(_level_db(_middle(audio)) - _level_db(source)) <= tolerance


def test_16k_wav_is_returned_sample_exact(tmp_path: Path) -> None:
    source = np.random.default_rng(0).uniform(-0.9, 0.9, TARGET)
    sf.write(tmp_path / "a.wav", source, TARGET, subtype="PCM_16")
    expected, _ = sf.read(tmp_path / "a.wav", dtype="float32")
    np.testing.assert_array_equal(load_audio(str(tmp_path / "a.wav")), expected)


def test_stereo_file_is_averaged(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    stereo = np.stack([_tone(500.0, TARGET), 0.2 * rng.standard_normal(TARGET)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, TARGET, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav"), stereo.mean(axis=1), atol=1e-7)


def test_stereo_file_at_44k_is_averaged_then_resampled(tmp_path: Path) -> None:
    tone = _tone(1000.0, 44100)
    sf.write(tmp_path / "s.flac", np.stack([tone, np.zeros_like(tone)], axis=1), 44100)
    audio = load_audio(tmp_path / "s.flac")
    # One silent channel halves the amplitude: -6 dB.
    assert abs(_level_db(_middle(audio)) - (_level_db(tone) - 20 * np.log10(2))) <= 0.1


def test_bytes_match_the_file(tmp_path: Path) -> None:
    path = tmp_path / "b.flac"
    sf.write(path, _tone(700.0, 44100), 44100)
    from_path = load_audio(path)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), from_path)
    np.testing.assert_array_equal(load_audio(bytearray(path.read_bytes())), from_path)


def test_hand_built_wav_with_extra_chunk_loads() -> None:
    samples = (np.arange(1600) * 20 - 16000).astype(np.int16)
    np.testing.assert_array_equal(load_audio(_pcm16_wav(samples, TARGET)), samples / 32768.0)


@pytest.mark.parametrize("placeholder", [0xFFFFFFFF, 0x7FFFF000])
def test_wav_with_streaming_size_placeholder_loads(placeholder: int) -> None:
    samples = (np.arange(1600) * 20 - 16000).astype(np.int16)
    audio = load_audio(_pcm16_wav(samples, TARGET, placeholder))
    np.testing.assert_array_equal(audio, samples / 32768.0)


def test_sample_rate_is_only_for_arrays(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", _tone(440.0, TARGET), TARGET)
    with pytest.raises(ValueError, match="only to numpy arrays"):
        load_audio(tmp_path / "a.wav", sample_rate=TARGET)


# -- arrays ------------------------------------------------------------------------


def test_int16_array_is_scaled() -> None:
    pcm = np.array([0, 16384, -32768, 32767, -16384], dtype=np.int16)
    audio = load_audio(pcm)
    assert audio.dtype == np.float32
    np.testing.assert_array_equal(audio, [0.0, 0.5, -1.0, 32767 / 32768, -0.5])


def test_float_array_without_rate_is_taken_as_16k() -> None:
    source = np.random.default_rng(2).uniform(-1, 1, 4000)
    audio = load_audio(source)
    assert audio.dtype == np.float32
    np.testing.assert_array_equal(audio, source.astype(np.float32))


def test_two_dimensional_array_is_frames_by_channels() -> None:
    tone = _tone(1000.0, 48000)
    stereo = np.stack([tone, -0.5 * tone], axis=1)
    audio = load_audio(stereo, sample_rate=48000)
    assert len(audio) == TARGET
    assert abs(_level_db(_middle(audio)) - (_level_db(tone) - 20 * np.log10(4))) <= 0.1


def test_int16_stereo_array_at_8k() -> None:
    pcm = (_tone(1000.0, 8000, amplitude=16384.0)[:, None] * np.ones(2)).astype(np.int16)
    audio = load_audio(pcm, sample_rate=8000)
    assert len(audio) == 2 * len(pcm)
    assert abs(_peak_hz(audio, TARGET) - 1000.0) <= 1.0
    assert abs(_level_db(_middle(audio)) - _level_db(_tone(1000.0, 8000))) <= 0.1


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_raw_pcm_of_every_width(width: int) -> None:
    full_scale = 2 ** (8 * width - 1)
    stereo = np.array([[0, full_scale // 2], [-full_scale, full_scale - 1]], dtype=np.int64)
    little_endian = b"".join(int(v).to_bytes(width, "little", signed=True) for v in stereo.reshape(-1))
    frames = pcm_frames(little_endian, width, channels=2)
    np.testing.assert_array_equal(frames, (stereo / full_scale).astype(np.float32))


@pytest.mark.parametrize(("data", "width", "channels", "message"),
                         [(b"\0" * 4, 5, 1, "sample width must be 1, 2, 3 or 4"),
                          (b"\0" * 4, 2, 0, "channels must be 1..32"),
                          (b"\0" * 6, 2, 2, "6 bytes are not whole frames of 2 x 2 bytes")])
def test_bad_raw_pcm(data: bytes, width: int, channels: int, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        pcm_frames(data, width, channels)


# -- resampler ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "freq"), [(48000, 7000.0), (44100, 7000.0), (22050, 7000.0), (8000, 3000.0)]
)
def test_resample_keeps_passband_tones(rate: int, freq: float) -> None:
    source = _tone(freq, rate, seconds=2.0)
    out = resample(source, rate, TARGET)
    assert abs(_peak_hz(_middle(out), TARGET) - freq) <= 1.0
    assert abs(_level_db(_middle(out)) - _level_db(source)) <= 0.2


@pytest.mark.parametrize(
    ("rate", "freq"), [(48000, 12000.0), (48000, 8500.0), (44100, 10000.0), (22050, 9000.0)]
)
def test_resample_suppresses_aliases(rate: int, freq: float) -> None:
    source = _tone(freq, rate, seconds=2.0)
    out = resample(source, rate, TARGET)
    assert _level_db(_middle(out)) - _level_db(source) < -40.0


def test_upsampling_leaves_no_image() -> None:
    # 3 kHz at 8 kHz upsampled to 16 kHz: a poor interpolator leaves an image at 5 kHz.
    out = resample(_tone(3000.0, 8000, seconds=2.0), 8000, TARGET)
    assert _band_db(_middle(out), TARGET, 4000.0, 8000.0) < -40.0


def test_resample_keeps_timing() -> None:
    click = np.zeros(48000, dtype=np.float32)
    click[24000] = 1.0
    assert int(np.abs(resample(click, 48000, TARGET)).argmax()) == 8000


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 44100, 48000, 96000])
def test_resample_length(rate: int) -> None:
    source = np.ones(rate // 3 + 7, dtype=np.float32)
    assert len(resample(source, rate, TARGET)) == -(-len(source) * TARGET // rate)


def test_resample_same_rate_is_identity() -> None:
    source = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    np.testing.assert_array_equal(resample(source, TARGET, TARGET), source)


def test_resample_one_minute_of_48k_is_fast() -> None:
    source = np.random.default_rng(4).standard_normal(60 * 48000).astype(np.float32)
    resample(source[:4800], 48000, TARGET)  # build the cached filter first
    start = time.perf_counter()
    out = resample(source, 48000, TARGET)
    elapsed = time.perf_counter() - start
    assert len(out) == 60 * TARGET
    assert elapsed < 1.0, f"resampling 1 min of 48 kHz audio took {elapsed:.2f} s"


# -- errors ------------------------------------------------------------------------


def test_audio_error_is_a_value_error() -> None:
    assert issubclass(AudioError, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"not found: .*nope\.wav"):
        load_audio(tmp_path / "nope.wav")


def test_text_file_named_wav(tmp_path: Path) -> None:
    (tmp_path / "notes.wav").write_text("these are not samples\n")
    message = r"cannot decode audio file .*notes\.wav.*Format not recognised"
    with pytest.raises(AudioError, match=message):
        load_audio(tmp_path / "notes.wav")


def test_garbage_bytes() -> None:
    with pytest.raises(AudioError, match=r"cannot decode audio data \(40 bytes\)"):
        load_audio(b"0123456789" * 4)


@pytest.mark.parametrize(("container", "subtype"), [("WAV", "PCM_16"), ("WAVEX", "PCM_24")])
def test_truncated_wav(tmp_path: Path, container: str, subtype: str) -> None:
    # libsndfile reads such a file without complaint, just shorter.
    sf.write(tmp_path / "full.wav", _tone(440.0, 44100), 44100, format=container, subtype=subtype)
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"audio file .*cut\.wav is truncated"):
        load_audio(tmp_path / "cut.wav")
    with pytest.raises(AudioError, match=r"audio data \(\d+ bytes\) is truncated"):
        load_audio(data[: len(data) // 2])


def test_truncated_hand_built_wav() -> None:
    data = _pcm16_wav(np.zeros(1600, dtype=np.int16), TARGET)
    with pytest.raises(AudioError, match="truncated"):
        load_audio(data[:-2])


def test_truncated_flac(tmp_path: Path) -> None:
    sf.write(tmp_path / "full.flac", np.random.default_rng(5).uniform(-0.5, 0.5, 48000), 48000)
    data = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"cut\.flac .*(corrupt or truncated|is truncated)"):
        load_audio(tmp_path / "cut.flac")


def test_truncated_mp3(tmp_path: Path) -> None:
    # The MP3 header promises more frames than a cut file decodes to.
    sf.write(tmp_path / "full.mp3", _tone(440.0, 44100, seconds=2.0), 44100, format="MP3")
    data = (tmp_path / "full.mp3").read_bytes()
    (tmp_path / "cut.mp3").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"cut\.mp3 is truncated: .* than the \d+ frames it holds"):
        load_audio(tmp_path / "cut.mp3")


def test_empty_wav(tmp_path: Path) -> None:
    sf.write(tmp_path / "empty.wav", np.zeros(0), TARGET)
    with pytest.raises(AudioError, match=r"empty\.wav contains no audio samples"):
        load_audio(tmp_path / "empty.wav")


def test_empty_array() -> None:
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(np.zeros(0, dtype=np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_array(bad: float) -> None:
    audio = np.zeros(1000)
    audio[500] = bad
    with pytest.raises(AudioError, match="NaN or Inf"):
        load_audio(audio)


def test_nan_in_float_wav(tmp_path: Path) -> None:
    audio = np.zeros(1000, dtype=np.float32)
    audio[10] = np.nan
    sf.write(tmp_path / "nan.wav", audio, TARGET, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav contains NaN or Inf"):
        load_audio(tmp_path / "nan.wav")


@pytest.mark.parametrize("rate", [0, -16000, 999, 384001, 10**9])
def test_bad_array_sample_rate(rate: int) -> None:
    with pytest.raises(AudioError, match=rf"sample rate {rate} Hz is outside 1000\.\.384000"):
        load_audio(np.zeros(1000), sample_rate=rate)


@pytest.mark.parametrize("rate", [44100.0, "16000", True])
def test_non_integer_sample_rate(rate: object) -> None:
    with pytest.raises(AudioError, match="must be an integer"):
        load_audio(np.zeros(1000), sample_rate=rate)  # type: ignore[arg-type]


def test_bad_sample_rate_in_file(tmp_path: Path) -> None:
    sf.write(tmp_path / "slow.wav", np.zeros(1000), 500)
    with pytest.raises(AudioError, match=r"slow\.wav: sample rate 500 Hz"):
        load_audio(tmp_path / "slow.wav")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 4800)), "channels"),
        (np.zeros((10, 2, 2)), "shape"),
        (np.zeros(1000, dtype=np.uint8), "dtype uint8"),
        (np.zeros(1000, dtype=np.complex64), "dtype complex64"),
    ],
)
def test_bad_arrays(array: np.ndarray, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        load_audio(array)


def test_unsupported_source_type() -> None:
    with pytest.raises(TypeError, match="path, bytes or numpy array"):
        load_audio(12345)  # type: ignore[arg-type]


# -- files made by other tools (CI installs espeak-ng and sox) ---------------------


def _require(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is required for this test: apt-get install {tool}"
    return path


def test_espeak_ng_speech(tmp_path: Path) -> None:
    espeak = _require("espeak-ng")
    text = "The quick brown fox jumps over the lazy dog."
    subprocess.run([espeak, "-w", str(tmp_path / "speech.wav"), text], check=True)
    info = sf.info(tmp_path / "speech.wav")
    assert info.samplerate == 22050
    audio = load_audio(tmp_path / "speech.wav")
    assert len(audio) == -(-info.frames * TARGET // 22050)
    assert _level_db(audio) > -40.0
    assert _band_db(audio, TARGET, 80.0, 4000.0) > -3.0  # voiced speech lives below 4 kHz
    # On a pipe espeak-ng can't seek back, so the header's sizes are placeholders.
    piped = subprocess.run([espeak, "--stdout", text], check=True, capture_output=True).stdout
    assert struct.unpack("<I", piped[40:44])[0] == 0x7FFFF000
    np.testing.assert_array_equal(load_audio(piped), audio)


def test_sox_stereo_24bit(tmp_path: Path) -> None:
    sox = _require("sox")
    path = tmp_path / "sox.wav"
    command = [sox, "-n", "-r", "44100", "-c", "2", "-b", "24", str(path)]
    command += ["synth", "1", "sine", "1000"]
    subprocess.run(command, check=True)
    audio = load_audio(path)
    assert len(audio) == TARGET
    assert abs(_peak_hz(audio, TARGET) - 1000.0) <= 1.0
