"""Real speech for tests and demos, synthesised with espeak-ng (a Debian package)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SAMPLE_TEXT = (
    "Turn on the kitchen lights. Set a timer for seven minutes. What is the weather like "
    "tomorrow morning? Play some quiet music in the living room. Call my sister at nine "
    "thirty. Remind me to water the plants on Sunday. Open the garage door and switch off "
    "the heater. Read me the news headlines, then stop."
)


def speak(text: str, out_wav: Path, voice: str = "en-us", words_per_minute: int = 150) -> Path:
    """Write `text` spoken by espeak-ng to a WAV (22050 Hz mono, 16-bit)."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    subprocess.run([binary, "-v", voice, "-s", str(words_per_minute), "-w", str(out_wav), text],
                   check=True, capture_output=True)
    return out_wav
