// The mdiff serve page: live video over a WebSocket into Media Source Extensions, code
// fill-in-the-middle through /v1/completions (server-sent events), and /v1/verify.
// No build step, no dependencies. `window.mdiffStats` exposes playback figures for tests.
"use strict";

const $ = (id) => document.getElementById(id);
const HOLE = "<HOLE>";
const stats = (window.mdiffStats = {
  mseSupported: typeof MediaSource !== "undefined",
  codec: null, codecSupported: null, startedAt: null, firstFrameMs: null,
  framesPainted: 0, segments: 0, segmentMs: [], bytes: 0, messages: [], done: false, error: null,
});

// ---- the API key: kept in localStorage, sent as a bearer token (or ?api_key= on WebSockets)
const keyInput = $("api-key");
keyInput.value = localStorage.getItem("mdiff.apiKey") || "";
keyInput.addEventListener("change", () => localStorage.setItem("mdiff.apiKey", keyInput.value));
const apiKey = () => keyInput.value.trim();
const authHeaders = (extra = {}) =>
  apiKey() ? { ...extra, Authorization: `Bearer ${apiKey()}` } : extra;

async function errorText(resp) {
  try {
    const body = await resp.json();
    return (body.error && body.error.message) || JSON.stringify(body);
  } catch (_) {
    return `${resp.status} ${resp.statusText}`;
  }
}

// ---- MP4 boxes: the codec string comes from the init segment's avcC box
function boxes(bytes, start, end) {
  const out = [];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = start; at + 8 <= end; ) {
    const size = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    if (size < 8 || at + size > end) return { out, complete: false };
    out.push({ type, start: at, end: at + size });
    at += size;
  }
  return { out, complete: true };
}

function avcCodec(bytes, moov) {  // avc1.PPCCLL: profile, compatibility, level (hex)
  for (let i = moov.start; i + 8 < moov.end; i++) {
    if (bytes[i] === 0x61 && bytes[i + 1] === 0x76 && bytes[i + 2] === 0x63 && bytes[i + 3] === 0x43) {
      const hex = (b) => b.toString(16).padStart(2, "0");
      return `avc1.${hex(bytes[i + 5])}${hex(bytes[i + 6])}${hex(bytes[i + 7])}`;
    }
  }
  return "avc1.64001f";  // no avcC found: H.264 High, level 3.1
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

// ---- live video: WebSocket → SourceBuffer, appended in order, one at a time
class LivePlayer {
  constructor(video, onStatus) {
    this.video = video;
    this.onStatus = onStatus;
    this.queue = [];
    this.pending = new Uint8Array(0);  // bytes before the init segment is complete
    this.buffer = null;
    this.ended = false;
    this.chain = Promise.resolve();
    this.source = new MediaSource();
    this.opened = new Promise((ok) => this.source.addEventListener("sourceopen", ok, { once: true }));
    video.src = URL.createObjectURL(this.source);
    this.watchFrames();
  }

  watchFrames() {
    const video = this.video;
    const tick = () => {
      stats.framesPainted += 1;
      if (stats.firstFrameMs === null) {
        stats.firstFrameMs = performance.now() - stats.startedAt;
        this.onStatus(`First frame after ${(stats.firstFrameMs / 1000).toFixed(2)} s.`);
      }
      if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(tick);
    };
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(tick);
    else video.addEventListener("timeupdate", () => video.currentTime > 0 && tick());
  }

  push(data) {  // segments are handled strictly in arrival order
    this.chain = this.chain.then(() => this.take(data));
    return this.chain;
  }

  async take(data) {
    stats.segments += 1;
    stats.segmentMs.push(Math.round(performance.now() - stats.startedAt));
    stats.bytes += data.byteLength;
    if (!this.buffer) {
      this.pending = concat(this.pending, new Uint8Array(data));
      const { out } = boxes(this.pending, 0, this.pending.length);
      const moov = out.find((b) => b.type === "moov");
      if (!moov) return;  // the init segment is not complete yet
      await this.opened;
      stats.codec = avcCodec(this.pending, moov);
      const type = `video/mp4; codecs="${stats.codec}"`;
      stats.codecSupported = MediaSource.isTypeSupported(type);
      if (!stats.codecSupported) throw new Error(`this browser cannot play ${type} through MSE`);
      this.buffer = this.source.addSourceBuffer(type);
      this.buffer.mode = "segments";
      this.buffer.addEventListener("updateend", () => this.drain());
      data = this.pending.buffer;
      this.pending = null;
    }
    this.queue.push(data);
    this.drain();
  }

  drain() {
    if (!this.buffer || this.buffer.updating) return;
    if (this.queue.length) {
      this.buffer.appendBuffer(this.queue.shift());
      if (this.video.paused) this.video.play().catch(() => {});
    } else if (this.ended && this.source.readyState === "open") {
      this.source.endOfStream();
    }
  }

  end() {
    this.chain = this.chain.then(() => { this.ended = true; this.drain(); });
  }
}

let socket = null;

function startVideo(event) {
  event.preventDefault();
  if (!stats.mseSupported) return setVideoStatus("This browser has no Media Source Extensions.");
  stopVideo();
  Object.assign(stats, { codec: null, codecSupported: null, firstFrameMs: null, framesPainted: 0,
    segments: 0, segmentMs: [], bytes: 0, messages: [], done: false, error: null });
  stats.startedAt = performance.now();
  const player = new LivePlayer($("video"), setVideoStatus);
  const url = new URL("/v1/realtime/video", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (apiKey()) url.searchParams.set("api_key", apiKey());
  socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => {
    socket.send(JSON.stringify({
      type: "start", prompt: $("video-prompt").value,
      frames: Number($("video-frames").value), seed: Number($("video-seed").value),
    }));
    setVideoStatus("Generating…");
    $("video-start").disabled = true;
    $("video-stop").disabled = false;
  };
  socket.onmessage = (msg) => {
    if (typeof msg.data !== "string") {
      player.push(msg.data).catch((err) => fail(err.message));
      return;
    }
    const status = JSON.parse(msg.data);
    stats.messages.push(status);
    if (status.type === "error") fail((status.error && status.error.message) || status.message);
    else if (["done", "end", "finished", "stopped"].includes(status.type)) finish(status);
  };
  const idle = () => {
    $("video-start").disabled = false;
    $("video-stop").disabled = true;
  };
  socket.onclose = () => {
    player.end();
    idle();
  };
  const finish = (status) => {  // the server keeps the socket for another start: ready again
    stats.done = true;
    idle();
    const id = status.id ? ` (id ${status.id})` : "";
    setVideoStatus(`Done: ${stats.framesPainted} frames shown${id}.`);
    player.end();
  };
  const fail = (message) => {
    stats.error = message || "the stream failed";
    idle();
    setVideoStatus(`Error: ${stats.error}`);
  };
}

function stopVideo() {
  if (socket && socket.readyState <= WebSocket.OPEN) {
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "stop" }));
    socket.close();
  }
  socket = null;
}

const setVideoStatus = (text) => { $("video-status").textContent = text; };
$("video-form").addEventListener("submit", startVideo);
$("video-stop").addEventListener("click", stopVideo);

// ---- code: prompt = before the hole, suffix = after; the filled text streams in (SSE)
async function fillHole(event) {
  event.preventDefault();
  const code = $("code").value;
  const at = code.indexOf(HOLE);
  const out = $("code-out");
  if (at < 0) return ($("code-status").textContent = `Put ${HOLE} where the fill should go.`);
  const before = code.slice(0, at);
  const after = code.slice(at + HOLE.length);
  const mark = document.createElement("mark");
  out.replaceChildren(before, mark, after);
  $("code-status").textContent = "Filling…";
  $("code-fill").disabled = true;
  try {
    const resp = await fetch("/v1/completions", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify({ prompt: before, suffix: after, stream: true,
        max_tokens: Number($("code-tokens").value), seed: Number($("code-seed").value) }),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let rest = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += value;
      const events = rest.split(/\r?\n\r?\n/);
      rest = events.pop();
      for (const ev of events) {
        const data = ev.split(/\r?\n/).filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trimStart()).join("\n");
        if (!data || data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices || []) mark.textContent += choice.text || "";
      }
    }
    $("code-status").textContent = `Filled ${mark.textContent.length} characters.`;
    out.dataset.done = "1";
  } catch (err) {
    $("code-status").textContent = `Error: ${err.message}`;
  } finally {
    $("code-fill").disabled = false;
  }
}
$("code-form").addEventListener("submit", fillHole);

// ---- verify: upload, show the verdict as a badge (colour by mdiff verify's exit code)
const VERDICTS = { 0: ["trusted", "ok"], 1: ["warning", "warn"], 2: ["tampered", "bad"],
  3: ["nothing found", "none"], 4: ["unreadable", "bad"] };

async function verifyFile(file) {
  const badge = $("badge");
  badge.hidden = false;
  badge.className = "badge";
  badge.textContent = `Verifying ${file.name}…`;
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const resp = await fetch("/v1/verify", { method: "POST", headers: authHeaders(), body: form });
    const report = await resp.clone().json().catch(() => ({}));
    if (!resp.ok && report.exit_code !== 4) throw new Error(await errorText(resp));
    if (!resp.ok) report.verdict = (report.error && report.error.message) || "unreadable";
    const [word, tone] = VERDICTS[report.exit_code] || ["unknown", "none"];
    badge.textContent = word;
    badge.className = `badge ${tone}`;
    badge.title = report.verdict || "";
    badge.dataset.exitCode = report.exit_code;
    $("verify-report").textContent = JSON.stringify(report, null, 2);
  } catch (err) {
    badge.textContent = `error: ${err.message}`;
    badge.className = "badge bad";
    badge.dataset.exitCode = "error";
  }
}

const drop = $("drop");
$("verify-file").addEventListener("change", (e) => e.target.files[0] && verifyFile(e.target.files[0]));
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) verifyFile(e.dataTransfer.files[0]);
});
