"""The page at `/` in a real headless Chromium (Debian's `chromium`, driven by Playwright): its
microphone is Chromium's fake capture device playing a WAV of the nano demo sentences, which
the page streams through an AudioWorklet to the Realtime endpoint; the final lines must hold
the spoken words. Then a question, and a file through /v1/audio/transcriptions.

MOSS_EDGE_SCREENSHOT=docs/img/browser.png makes it save the README's screenshot.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import soundfile as sf
from playwright.sync_api import Page, sync_playwright

from edge_runtime.bundle import load_bundle
from edge_runtime.cli.demo import DEMO_SENTENCES, demo_clip
from edge_runtime.transcribe import MossAudio
from moss_audio_edge.export.nano import corpus

from test_server import KEY, running

CHROMIUM = "/usr/bin/chromium"  # scripts/setup.sh installs Debian's package
SR = 16000
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> Path:
    """The demo sentences between silences, as a 16-bit WAV for the fake microphone."""
    clip = demo_clip(load_bundle("nano"))
    silence = np.zeros(SR, np.float32)
    path = tmp_path_factory.mktemp("browser") / "demo.wav"
    sf.write(path, np.concatenate([silence, clip.audio, silence, silence]), SR, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def page(spoken) -> Iterator[tuple[Page, str]]:
    with running(MossAudio("nano", threads=2)) as (base, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={spoken}", "--autoplay-policy=no-user-gesture-required"])
        context = browser.new_context(permissions=["microphone"], accept_downloads=True)
        page = context.new_page()
        page.goto(base + "/")
        page.fill("#key", KEY)
        yield page, base
        browser.close()


def wer(said: str) -> float:
    truth = corpus.words(" ".join(DEMO_SENTENCES))
    return corpus.word_errors(truth, corpus.words(said)) / len(truth)


def card_wer() -> float:
    return next(r for r in load_bundle("nano").manifest.model_card["quality"]["rows"] if r["set"] == "clean")["wer"]


def test_the_page_transcribes_its_microphone_live_and_answers_a_question(page):
    page, _ = page
    assert page.title() == "moss-edge"
    page.click("#start")
    page.wait_for_function(f"document.querySelectorAll('#transcript .line.final').length >= {len(DEMO_SENTENCES)}",
                           timeout=WAIT_MS)
    finals = page.locator("#transcript .line.final")
    said = " ".join(finals.locator(".text").all_inner_texts())
    assert wer(said) <= card_wer() + 0.24, said  # test_nano's bound for the demo clip
    assert all(stamp.startswith("[0:") and "→" in stamp for stamp in finals.locator(".stamp").all_inner_texts())
    assert page.locator("#transcript .line.partial").count() == 0  # every partial became final
    page.fill("#question", "What did the speaker say?")
    page.click("#ask-button")
    page.wait_for_function("document.querySelector('#answers .reply') && "
                           "document.querySelector('#answers .reply').textContent.length > 0", timeout=WAIT_MS)
    assert "error" not in page.locator("#answers .reply").get_attribute("class")
    page.click("#stop")


def test_a_file_is_transcribed_with_subtitle_downloads(page, spoken):
    page, _ = page
    page.set_input_files("#file", str(spoken))
    page.wait_for_selector("#file-result .line", timeout=WAIT_MS)
    said = " ".join(page.locator("#file-result .text").all_inner_texts())
    assert wer(said) <= card_wer() + 0.24, said
    with page.expect_download(timeout=WAIT_MS) as download:
        page.click("#downloads button[data-format=srt]")
    assert download.value.suggested_filename == "demo.srt"
    srt = Path(download.value.path()).read_text()
    text = [line for line in srt.splitlines() if line and "-->" not in line and not line.isdigit()]
    assert "-->" in srt and wer(" ".join(text)) <= card_wer() + 0.24, srt
    if os.environ.get("MOSS_EDGE_SCREENSHOT"):  # the page with everything it shows
        page.screenshot(path=os.environ["MOSS_EDGE_SCREENSHOT"], full_page=True)
