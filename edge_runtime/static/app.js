// The page's logic: microphone -> AudioWorklet -> the Realtime WebSocket; questions as
// response.create; files through /v1/audio/transcriptions (docs/realtime.md#the-browser-page).
"use strict";

const RATE = 16000; // the model's rate: the browser resamples the microphone, the server need not
const $ = (id) => document.getElementById(id);
const keyInput = $("key");
keyInput.value = localStorage.getItem("moss-edge-key") || "";
keyInput.addEventListener("change", () => localStorage.setItem("moss-edge-key", keyInput.value));

function authHeaders() {
  return keyInput.value ? { Authorization: "Bearer " + keyInput.value } : {};
}

function clock(seconds) {
  if (seconds === null || seconds === undefined) return "  ?  ";
  const m = Math.floor(seconds / 60);
  return m + ":" + (seconds - 60 * m).toFixed(2).padStart(5, "0");
}

function setState(text, isError) {
  $("state").textContent = text;
  $("state").className = isError ? "error" : "muted";
}

fetch("/v1/models", { headers: authHeaders() })
  .then((r) => (r.ok ? r.json() : null))
  .then((models) => { if (models) $("model").textContent = models.data[0].id; })
  .catch(() => {});

// --- live transcription ------------------------------------------------------------------

let socket = null;
let capture = null; // { stream, context, source, node }
const lines = new Map(); // item_id -> its line in the transcript
let answer = null; // the element the current answer streams into
let speaking = false; // between speech_started and its completed item

function line(itemId) {
  if (!lines.has(itemId)) {
    const div = document.createElement("div");
    div.className = "line partial";
    div.innerHTML = '<span class="stamp"></span><span class="text"></span>';
    $("transcript").appendChild(div);
    lines.set(itemId, div);
  }
  return lines.get(itemId);
}

function onEvent(event) {
  switch (event.type) {
    case "input_audio_buffer.speech_started":
      speaking = true;
      setState("hearing speech");
      break;
    case "input_audio_buffer.speech_stopped":
      setState("transcribing");
      break;
    case "conversation.item.input_audio_transcription.delta": {
      const div = line(event.item_id);
      div.querySelector(".text").textContent = event.text !== undefined ? event.text
        : div.querySelector(".text").textContent + event.delta;
      break;
    }
    case "conversation.item.input_audio_transcription.completed": {
      const div = line(event.item_id);
      if (!event.transcript) { div.remove(); break; }
      const start = event.start ?? event.audio_start_s, end = event.end ?? event.audio_end_s;
      div.className = "line final";
      div.querySelector(".stamp").textContent = "[" + clock(start) + " → " + clock(end) + "]";
      div.querySelector(".text").textContent = event.transcript;
      speaking = false;
      setState(capture ? "listening" : "stopped");
      break;
    }
    case "response.text.delta":
      if (answer) answer.textContent += event.delta;
      break;
    case "response.done":
      if (answer) answer.textContent = event.response.output[0].content[0].text;
      answer = null;
      break;
    case "error":
      setState(event.error.message, true);
      if (answer) { answer.textContent = event.error.message; answer.classList.add("error"); answer = null; }
      break;
  }
}

function openSocket() {
  return new Promise((resolve, reject) => {
    const protocols = ["realtime"].concat(keyInput.value ? ["openai-insecure-api-key." + keyInput.value] : []);
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/realtime?intent=transcription";
    const ws = new WebSocket(url, protocols);
    ws.onmessage = (message) => onEvent(JSON.parse(message.data));
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "session.update", session: {
        input_audio_format: { type: "audio/pcm", rate: RATE },
        turn_detection: { type: "server_vad", silence_duration_ms: 600, prefix_padding_ms: 300 } } }));
      resolve(ws);
    };
    ws.onerror = () => reject(new Error("could not connect to the Realtime endpoint"));
    ws.onclose = (close) => {
      socket = null;
      $("ask-button").disabled = true;
      if (close.code !== 1000 && close.code !== 1005) setState("closed: " + (close.reason || close.code), true);
    };
  });
}

function base64(buffer) {
  return btoa(String.fromCharCode.apply(null, new Uint8Array(buffer)));
}

async function start() {
  $("start").disabled = true;
  try {
    socket = socket || await openSocket();
    const stream = await navigator.mediaDevices.getUserMedia({ audio: {
      channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
    const context = new AudioContext({ sampleRate: RATE });
    await context.audioWorklet.addModule("/static/pcm-worklet.js");
    const node = new AudioWorkletNode(context, "pcm-blocks", { processorOptions: { blockSamples: RATE * 0.04 } });
    node.port.onmessage = (message) => {
      if (socket && socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64(message.data) }));
      }
    };
    const source = context.createMediaStreamSource(stream);
    source.connect(node);
    node.connect(context.destination); // pulls the node along; it writes silence
    await context.resume();
    capture = { stream, context, source, node }; // held: Chromium collects unreferenced nodes
    $("stop").disabled = false;
    $("ask-button").disabled = false;
    setState("listening");
  } catch (error) {
    setState(error.message, true);
    $("start").disabled = false;
  }
}

function stop() {
  if (!capture) return;
  capture.stream.getTracks().forEach((track) => track.stop());
  capture.context.close();
  capture = null;
  // what is still being said becomes final; the session stays open for questions
  if (socket && speaking) socket.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
  $("stop").disabled = true;
  $("start").disabled = false;
  setState("stopped");
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);

$("ask").addEventListener("submit", (submit) => {
  submit.preventDefault();
  const question = $("question").value.trim();
  if (!question || !socket) return;
  const block = document.createElement("div");
  block.className = "answer";
  block.innerHTML = "<div><b>Q:</b> <span></span></div><div><b>A:</b> <span class=\"reply\"></span></div>";
  block.querySelector("span").textContent = question;
  $("answers").appendChild(block);
  answer = block.querySelector(".reply");
  socket.send(JSON.stringify({ type: "response.create", response: { instructions: question } }));
  $("question").value = "";
});

// --- files -------------------------------------------------------------------------------

let dropped = null; // { file, json }

async function transcription(file, format) {
  const form = new FormData();
  form.append("file", file);
  form.append("response_format", format);
  form.append("timestamp_granularities[]", "segment");
  const response = await fetch("/v1/audio/transcriptions", { method: "POST", body: form, headers: authHeaders() });
  if (!response.ok) throw new Error((await response.json()).error.message);
  return format === "verbose_json" ? response.json() : response.text();
}

async function transcribeFile(file) {
  const result = $("file-result");
  result.hidden = false;
  result.textContent = "transcribing " + file.name + " …";
  $("downloads").hidden = true;
  try {
    const json = await transcription(file, "verbose_json");
    dropped = { file, json };
    result.textContent = "";
    for (const segment of json.segments) {
      const div = document.createElement("div");
      div.className = "line final";
      div.innerHTML = '<span class="stamp"></span><span class="text"></span>';
      div.querySelector(".stamp").textContent = "[" + clock(segment.start) + " → " + clock(segment.end) + "]";
      div.querySelector(".text").textContent = segment.text;
      result.appendChild(div);
    }
    $("downloads").hidden = false;
  } catch (error) {
    result.innerHTML = '<span class="error"></span>';
    result.firstChild.textContent = error.message;
  }
}

async function download(format) {
  if (!dropped) return;
  // .json is the transcript shown; subtitles are rendered by the server (formats.py), on demand
  const text = format === "json" ? JSON.stringify(dropped.json, null, 2) : await transcription(dropped.file, format);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
  link.download = dropped.file.name.replace(/\.[^.]*$/, "") + "." + format;
  link.click();
  URL.revokeObjectURL(link.href);
}

$("file").addEventListener("change", () => { if ($("file").files[0]) transcribeFile($("file").files[0]); });
$("downloads").addEventListener("click", (click) => {
  if (click.target.dataset.format) download(click.target.dataset.format).catch((e) => setState(e.message, true));
});
const drop = $("drop");
drop.addEventListener("dragover", (over) => { over.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (dropEvent) => {
  dropEvent.preventDefault();
  drop.classList.remove("over");
  if (dropEvent.dataTransfer.files[0]) transcribeFile(dropEvent.dataTransfer.files[0]);
});
