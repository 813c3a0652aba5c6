// vidmesh dashboard: plain JS, no build step. Talks only to the gateway's public API.
//
// Auth: API calls send `Authorization: Bearer <key>`. <video>, <img> and EventSource cannot
// send headers, so media and event URLs carry a short-lived, read-only `?token=` that the
// page gets from POST /v1/tokens (the API key itself never goes into a URL).
//
// Playback: HLS through hls.js (served by the gateway from the npm package, see
// web/package.json), with a quality menu; see "the player" below.
"use strict";

const MAX_STREAMS = 3; // a browser allows 6 HTTP/1.1 connections per host: leave room for media
const POLL_MS = 5000;
const TERMINAL = { video_ready: "ready", video_failed: "failed", video_deleted: "deleted" };
const EVENT_NAMES = [
  "video_planned", "chunk_progress", "chunk_encoded", "video_playable", "rendition_stitched",
  "thumbnail_extracted", "task_failed", "video_ready", "video_failed", "video_deleted", "video",
];

const $ = (id) => document.getElementById(id);
const state = {
  key: null,
  token: null,
  tokenExpires: 0,
  videos: new Map(), // id -> video (the API's JSON)
  order: [], // ids, newest first
  streams: new Map(), // id -> EventSource
  live: new Map(), // id -> what its event stream told (see Encoding)
  waiting: [], // ids that want a stream
  retries: new Map(), // id -> refused stream attempts
  selected: null,
  poller: null,
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

// --- API ------------------------------------------------------------------------------------

async function api(method, path, { body, headers } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method,
      body,
      headers: { Authorization: `Bearer ${state.key}`, ...(headers || {}) },
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, "unreachable", `cannot reach the gateway (${err.message})`);
  }
  if (!response.ok) throw await apiError(response);
  return response.json();
}

async function apiError(response) {
  try {
    const body = await response.json();
    return new ApiError(response.status, body.code, body.message);
  } catch (_) {
    return new ApiError(response.status, `http_${response.status}`, response.statusText);
  }
}

async function ensureToken(force = false) {
  const now = Date.now() / 1000;
  if (!force && state.token && state.tokenExpires - now > 600) return state.token;
  const minted = await api("POST", "/v1/tokens");
  state.token = minted.token;
  state.tokenExpires = minted.expires_at;
  $("tenant-note").textContent = `tenant ${minted.tenant}`;
  return state.token;
}

function mediaUrl(path) {
  return `${path}?token=${encodeURIComponent(state.token)}`;
}

// --- session --------------------------------------------------------------------------------

async function connect(key, remember) {
  state.key = key;
  try {
    await ensureToken(true);
    await refreshList();
  } catch (err) {
    state.key = null;
    notice(err.code === "unauthorized" ? "That API key was refused (unauthorized)." : err.message);
    return;
  }
  (remember ? localStorage : sessionStorage).setItem("vidmesh.key", key);
  notice(null);
  $("login").hidden = true;
  $("session").hidden = false;
  $("app").hidden = false;
  state.poller = setInterval(() => refreshList().catch(showError), POLL_MS);
}

function logout() {
  localStorage.removeItem("vidmesh.key");
  sessionStorage.removeItem("vidmesh.key");
  clearInterval(state.poller);
  for (const es of state.streams.values()) es.close();
  state.streams.clear();
  state.waiting = [];
  state.videos.clear();
  state.live.clear();
  state.order = [];
  state.key = state.token = state.selected = null;
  detach();
  $("videos").replaceChildren();
  $("uploads").replaceChildren();
  $("detail").hidden = true;
  $("app").hidden = true;
  $("session").hidden = true;
  $("login").hidden = false;
  $("key").value = "";
}

function notice(text) {
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
}

function showError(err) {
  notice(err instanceof ApiError ? `${err.code}: ${err.message.replace(/^[^:]*: /, "")}` : String(err));
}

// --- the list -------------------------------------------------------------------------------

async function refreshList() {
  const page = await api("GET", "/v1/videos?limit=50");
  const ids = page.items.map((v) => v.id);
  for (const v of page.items) merge(v);
  // keep videos just uploaded from this page that the catalog has not listed yet
  const recent = (v) => v && v.status === "processing" && Date.now() / 1000 - v.created_at < 30;
  const extra = state.order.filter((id) => !ids.includes(id) && recent(state.videos.get(id)));
  state.order = [...extra, ...ids];
  for (const id of [...state.videos.keys()]) {
    if (!state.order.includes(id) && id !== state.selected) {
      state.videos.delete(id);
      state.live.delete(id);
    }
  }
  await ensureToken();
  renderList();
  for (const v of page.items) if (v.status === "processing") follow(v.id);
}

function merge(video) {
  const old = state.videos.get(video.id);
  // a live stream knows more than a lagging catalog read: never go back in progress
  if (old && old.status !== "processing" && video.status === "processing") return;
  if (old && video.status === "processing") {
    video.progress = { ...video.progress };
    for (const [name, pct] of Object.entries(old.progress || {})) {
      if ((video.progress[name] ?? -1) < pct) video.progress[name] = pct;
    }
    if (!video.planned?.length && old.planned?.length) video.planned = old.planned;
    if (old.playable && !video.playable) Object.assign(video, { playable: true, playback: old.playback });
    if (old.note && !video.note) video.note = old.note; // a failed task, known from the stream only
  }
  state.videos.set(video.id, video);
  if (!state.order.includes(video.id)) state.order.unshift(video.id);
}

function renderList() {
  const list = $("videos");
  const rows = state.order.map((id) => state.videos.get(id)).filter(Boolean).map(row);
  list.replaceChildren(...rows);
  $("empty").hidden = rows.length > 0;
  if (state.selected) renderDetail();
}

function updateVideo(id) {
  const video = state.videos.get(id);
  if (!video) return;
  const old = document.querySelector(`#videos li[data-id="${id}"]`);
  if (old) old.replaceWith(row(video));
  else renderList();
  if (state.selected === id) renderDetail();
}

function row(v) {
  const li = el("li", { class: "video" + (state.selected === v.id ? " selected" : "") });
  li.dataset.id = v.id;
  li.dataset.status = v.status;
  li.tabIndex = 0;
  li.addEventListener("click", () => select(v.id));
  li.addEventListener("keydown", (e) => { if (e.key === "Enter") select(v.id); });

  const thumb = el("div", { class: "mini" });
  if (v.thumbnail && state.token) {
    const img = el("img", { alt: "", loading: "lazy" });
    img.src = mediaUrl(v.thumbnail.url);
    thumb.append(img);
  }
  const main = el("div", { class: "meta" });
  main.append(el("div", { class: "name" }, v.filename || v.id));
  main.append(el("div", { class: "sub muted" }, [when(v.created_at), sourceLine(v.source)].filter(Boolean).join(" · ")));
  if (v.status === "processing") main.append(progressBars(v, true));
  if (v.status === "failed" && v.error) main.append(el("div", { class: "error small" }, errorText(v.error)));
  for (const w of v.warnings || []) main.append(el("div", { class: "warning small" }, `${w.code}: ${w.message}`));
  li.append(thumb, main, badge(v));
  return li;
}

function badge(v) {
  const b = el("span", { class: `badge ${v.status}` }, v.status);
  b.dataset.status = v.status;
  return b;
}

function progressBars(v, compact) {
  const box = el("div", { class: compact ? "progress-list compact" : "progress-list" });
  const names = v.planned?.length ? v.planned : Object.keys(v.progress || {});
  if (!names.length) {
    box.append(el("div", { class: "muted small" }, "probing and planning…"));
    return box;
  }
  const live = state.live.get(v.id);
  for (const name of names) {
    const done = v.renditions?.some((r) => r.name === name) || live?.stitched.has(name);
    // rounded down: 100 % only once the rendition's MP4 is stitched
    const pct = done ? 100 : Math.min(99, Math.floor(v.progress?.[name] ?? 0));
    const failed = !done && live?.failures[name];
    const line = el("div", { class: "pline" + (failed ? " failed" : "") });
    line.dataset.rendition = name;
    line.title = failed ? `failed: ${failed}` : done ? "ready to download" : live?.stage() || "";
    const bar = el("progress", { max: "100" });
    bar.value = pct;
    line.append(el("span", { class: "pname" }, name), bar, el("span", { class: "pct" }, failed ? "failed" : `${pct}%`));
    box.append(line);
  }
  return box;
}

// Progress of a video from its events. Chunk tasks encode every rendition of a part of the
// timeline at once, so renditions advance together: each one's share is the segments encoded
// (per chunk, the most chunk_progress reported, or chunk_encoded's final count) over the
// segments video_planned expects. A rendition is done only when rendition_stitched says its
// MP4 is stored; until then it stays below 100 % (the planned count is an estimate, and the
// stitch is still to run). Events may repeat (a replayed history): applying is idempotent.
class Encoding {
  constructor() {
    this.chunks = 0;
    this.segments = 0;
    this.chunkSegments = new Map(); // chunk -> segments encoded so far
    this.encoded = new Set(); // chunks done
    this.stitched = new Set();
    this.failures = {}; // rendition -> "task code"
  }

  apply(name, data, renditions) {
    if (name === "video_planned") {
      this.chunks = data.chunks || 0;
      this.segments = data.segments || 0;
    } else if (name === "chunk_progress" && !this.encoded.has(data.chunk)) {
      this.chunkSegments.set(data.chunk, Math.max(this.chunkSegments.get(data.chunk) || 0, data.segments || 0));
    } else if (name === "chunk_encoded") {
      this.encoded.add(data.chunk);
      this.chunkSegments.set(data.chunk, (data.segments || []).length);
    } else if (name === "rendition_stitched") {
      this.stitched.add(data.rendition);
    } else if (name === "task_failed" && (data.task.startsWith("chunk:") || data.task === "stitch")) {
      // a chunk or the stitch holds back every rendition not stitched yet
      for (const r of renditions) if (!this.stitched.has(r)) this.failures[r] = `${data.task} ${data.error.code}`;
    }
  }

  get allEncoded() {
    return this.chunks > 0 && this.encoded.size >= this.chunks;
  }

  percent() {
    if (this.allEncoded) return 99;
    let done = 0;
    for (const n of this.chunkSegments.values()) done += n;
    return Math.min(99, (100 * done) / Math.max(this.segments, done, 1));
  }

  stage() {
    if (this.allEncoded) return "encoded, stitching";
    return this.chunkSegments.size ? `encoding, ${this.encoded.size} of ${this.chunks} chunks done` : "queued";
  }
}

// --- live progress over SSE -----------------------------------------------------------------

function follow(id) {
  if (state.streams.has(id) || state.waiting.includes(id)) return;
  if (state.streams.size >= MAX_STREAMS) {
    state.waiting.push(id); // the list poll keeps it fresh meanwhile
    return;
  }
  const es = new EventSource(mediaUrl(`/v1/videos/${encodeURIComponent(id)}/events`));
  state.streams.set(id, es);
  for (const name of EVENT_NAMES) {
    es.addEventListener(name, (e) => onEvent(id, name, e));
  }
  es.onerror = () => {
    // The browser retries by itself while the stream is CONNECTING; a refused request
    // (e.g. an expired token) leaves it CLOSED: renew the token, re-read, start again.
    if (es.readyState !== EventSource.CLOSED) return;
    unfollow(id);
    const tries = (state.retries.get(id) || 0) + 1;
    state.retries.set(id, tries);
    if (tries > 3) return; // the list poll keeps it fresh
    ensureToken(true)
      .then(() => reload(id))
      .then(() => { if (state.videos.get(id)?.status === "processing") follow(id); })
      .catch(showError);
  };
}

function unfollow(id) {
  const es = state.streams.get(id);
  if (es) es.close();
  state.streams.delete(id);
  state.waiting = state.waiting.filter((w) => w !== id);
  while (state.waiting.length && state.streams.size < MAX_STREAMS) {
    const next = state.waiting.shift();
    if (state.videos.get(next)?.status === "processing") follow(next);
  }
}

function onEvent(id, name, e) {
  const v = state.videos.get(id);
  if (!v) return;
  let data = {};
  try { data = JSON.parse(e.data); } catch (_) { return; }
  v.progress = v.progress || {};
  if (!state.live.has(id)) state.live.set(id, new Encoding());
  const live = state.live.get(id);
  if (name === "video_planned") v.planned = data.renditions.map((r) => r.name);
  live.apply(name, data, v.planned || []);
  switch (name) {
    case "video_planned":
    case "chunk_progress":
    case "chunk_encoded":
      for (const r of v.planned || []) {
        if (!live.stitched.has(r)) v.progress[r] = Math.max(v.progress[r] || 0, live.percent());
      }
      break;
    case "video_playable":
      reload(id, (got) => got.playable); // the catalog has its HLS URL now (or in a moment)
      break;
    case "rendition_stitched":
      v.progress[data.rendition] = 100;
      reload(id); // the catalog now has its URL
      break;
    case "thumbnail_extracted":
      reload(id);
      break;
    case "task_failed":
      v.note = `${data.task} failed: ${errorText(data.error, data.task)}`;
      break;
    case "video":
      state.videos.set(id, data);
      unfollow(id);
      updateVideo(id);
      return;
    default:
      if (TERMINAL[name]) {
        unfollow(id);
        v.status = TERMINAL[name];
        if (data.error) v.error = data.error;
        updateVideo(id);
        reload(id, TERMINAL[name]);
        return;
      }
  }
  updateVideo(id);
}

// Read a video back; the catalog projects events a moment after the stream shows them.
// `expected`: the status to wait for, or a test of the video.
async function reload(id, expected, tries = 25) {
  try {
    const v = await api("GET", `/v1/videos/${encodeURIComponent(id)}`);
    const arrived = typeof expected === "function" ? expected(v) : v.status === expected;
    if (expected && !arrived && tries > 0) {
      setTimeout(() => reload(id, expected, tries - 1), 200);
      return;
    }
    merge(v);
    updateVideo(id);
  } catch (err) {
    showError(err);
  }
}

// --- uploads --------------------------------------------------------------------------------

function uploadFiles(files) {
  for (const file of files) uploadOne(file);
}

// Uploads go through tus (tus-js-client, served by the gateway from its npm package) to
// /v1/uploads: a dropped connection is retried and resumes from the offset the gateway
// stored, and a file dropped again after a reload resumes where it stopped (tus-js-client
// remembers the upload's URL in localStorage by file name, type, size and date). Without
// tus-js-client, one POST /v1/videos per file.
const TUS_RETRY_MS = [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000];
window.vidmeshUploads = []; // the tus.Upload of each file, for scripts and tests

function uploadOne(file) {
  const item = el("li", { class: "upload" });
  const bar = el("progress", { max: "100" });
  bar.value = 0;
  const label = el("span", { class: "uname" }, file.name);
  const status = el("span", { class: "pct" }, "0%");
  item.append(label, bar, status);
  $("uploads").prepend(item);
  const ui = {
    progress(sent, total) {
      const pct = total ? Math.round((100 * sent) / total) : 0;
      bar.value = pct;
      status.textContent = pct < 100 ? `${pct}%` : "probing…";
    },
    accepted(video) {
      item.classList.remove("retrying");
      item.classList.add("done");
      bar.value = 100;
      status.textContent = "uploaded";
      merge(video);
      renderList();
      follow(video.id);
      setTimeout(() => item.remove(), 4000);
    },
    failed(text) {
      item.classList.add("failed");
      status.textContent = text;
    },
  };
  if (window.tus && window.tus.isSupported) uploadTus(file, item, ui);
  else uploadPost(file, ui);
}

function uploadTus(file, item, ui) {
  const upload = new window.tus.Upload(file, {
    endpoint: "/v1/uploads",
    headers: { Authorization: `Bearer ${state.key}` },
    metadata: { filename: file.name, filetype: file.type || "application/octet-stream" },
    retryDelays: TUS_RETRY_MS,
    removeFingerprintOnSuccess: true,
    onProgress: (sent, total) => ui.progress(sent, total),
    onShouldRetry: (err, attempt, options) => {
      const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
      // 423: another request still holds the upload; 408/5xx and no answer: the network or
      // the gateway; 409: our offset is stale (the retry asks HEAD first)
      const again = status === 0 || status === 408 || status === 409 || status === 423 || status >= 500;
      if (again) item.classList.add("retrying");
      return again;
    },
    onSuccess: async (payload) => {
      const res = payload && payload.lastResponse;
      const id = res && res.getHeader("Vidmesh-Video-Id");
      if (!id) {
        const code = res && res.getHeader("Vidmesh-Upload-Error");
        ui.failed(code ? `${code}: the upload was refused` : "uploaded, but the gateway named no video");
        return;
      }
      try {
        ui.accepted(await api("GET", `/v1/videos/${id}`));
      } catch (_) {
        ui.accepted({ id, status: "processing", created_at: Date.now() / 1000, filename: file.name });
      }
    },
    onError: (err) => {
      const res = err.originalResponse;
      let text = "unreachable: the upload did not reach the gateway";
      if (res) {
        try {
          const body = JSON.parse(res.getBody() || "{}");
          text = `${body.code || res.getStatus()}: ${body.message || "refused"}`;
        } catch (_) {
          text = `http_${res.getStatus()}`;
        }
      }
      ui.failed(text);
    },
  });
  window.vidmeshUploads.push(upload);
  upload.findPreviousUploads().then((previous) => {
    if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
    upload.start();
  });
}

function uploadPost(file, ui) {
  const form = new FormData();
  form.append("file", file, file.name);
  const xhr = new XMLHttpRequest(); // fetch() cannot report upload progress
  xhr.open("POST", "/v1/videos");
  xhr.setRequestHeader("Authorization", `Bearer ${state.key}`);
  xhr.responseType = "json";
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) ui.progress(e.loaded, e.total);
  };
  xhr.onload = () => {
    const body = xhr.response || {};
    if (xhr.status === 202) ui.accepted(body);
    else ui.failed(`${body.code || xhr.status}: ${body.message || xhr.statusText}`);
  };
  xhr.onerror = () => ui.failed("unreachable: the upload did not reach the gateway");
  xhr.send(form);
}

function setupDrop() {
  const drop = $("drop");
  const on = (e) => { e.preventDefault(); drop.classList.add("over"); };
  const off = () => drop.classList.remove("over");
  drop.addEventListener("dragenter", on);
  drop.addEventListener("dragover", on);
  drop.addEventListener("dragleave", off);
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    off();
    if (e.dataTransfer?.files?.length) uploadFiles(e.dataTransfer.files);
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  $("file").addEventListener("change", (e) => {
    uploadFiles(e.target.files);
    e.target.value = "";
  });
  // a file dropped anywhere else must not navigate away from the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
}

// --- the detail view ------------------------------------------------------------------------

function select(id) {
  if (state.selected !== id) {
    state.selected = id;
    detach();
    // a video still processing starts playing as soon as it is playable
    player.autoplay = state.videos.get(id)?.status === "processing" ? id : null;
  }
  for (const li of document.querySelectorAll("#videos li")) li.classList.toggle("selected", li.dataset.id === id);
  renderDetail();
  reload(id);
}

function renderDetail() {
  const v = state.videos.get(state.selected);
  const detail = $("detail");
  if (!v) { detail.hidden = true; return; }
  detail.hidden = false;
  detail.dataset.id = v.id;
  detail.dataset.status = v.status;
  $("d-title").textContent = v.filename || v.id;
  $("d-status").replaceWith(Object.assign(badge(v), { id: "d-status" }));
  $("d-id").textContent = v.id;

  const error = $("d-error");
  error.hidden = !v.error;
  error.textContent = v.error ? `Failed: ${errorText(v.error)}` : "";
  const warnings = $("d-warnings");
  warnings.replaceChildren(...(v.warnings || []).map((w) => el("li", {}, `${w.code}: ${w.message}`)));
  warnings.hidden = !(v.warnings || []).length;

  const progress = $("d-progress");
  progress.replaceChildren(...(v.status === "processing" ? [progressBars(v, false)] : []));
  const live = state.live.get(v.id);
  if (live && v.status === "processing") progress.append(el("div", { class: "muted small stage" }, live.stage()));
  if (v.note && v.status === "processing") progress.append(el("div", { class: "error small" }, v.note));

  const thumb = $("d-thumb");
  if (v.thumbnail) {
    const src = mediaUrl(v.thumbnail.url);
    if (thumb.dataset.for !== v.id) { thumb.src = src; thumb.dataset.for = v.id; }
    thumb.hidden = false;
  } else {
    thumb.hidden = true;
    thumb.removeAttribute("src");
    delete thumb.dataset.for;
  }

  renderPlayer(v);
  if (v.thumbnail) $("player").poster = thumb.src;
  else $("player").removeAttribute("poster");

  const facts = $("d-source");
  const s = v.source || {};
  const rows = [
    ["size", s.size != null ? bytes(s.size) : null],
    ["container", s.container],
    ["duration", s.duration != null ? `${s.duration.toFixed(2)} s` : null],
    ["picture", s.width ? `${s.width}×${s.height}` : null],
    ["frame rate", s.fps ? `${+s.fps.toFixed(3)} fps` : null],
    ["video", s.video_codec],
    ["audio", s.audio_codec || "none"],
    ["rotation", s.rotation ? `${s.rotation}°` : null],
    ["uploaded", when(v.created_at)],
    ["updated", when(v.updated_at)],
  ].filter(([, value]) => value);
  facts.replaceChildren(...rows.flatMap(([k, value]) => [el("dt", {}, k), el("dd", {}, value)]));

  const renditions = [...(v.renditions || [])].sort((a, b) => b.height - a.height);
  const body = $("d-files").tBodies[0];
  body.replaceChildren(...renditions.map((r) => {
    const tr = el("tr");
    const link = el("a", { href: mediaUrl(r.url), download: `${v.id}-${r.name}.mp4` }, "download");
    const cell = el("td");
    cell.append(link);
    tr.append(
      el("td", {}, r.name), el("td", {}, `${r.width}×${r.height}`), el("td", {}, bytes(r.size)),
      el("td", {}, r.has_audio ? "yes" : "no"), cell,
    );
    return tr;
  }));
  $("d-files").hidden = renditions.length === 0;
}

// --- the player -----------------------------------------------------------------------------
//
// A video plays its HLS master playlist (`playback.hls` with the read token; the gateway's
// playlists carry the token on every URI) through hls.js, from /static/hls.js/ (the npm
// package pinned in web/package.json; the gateway serves it from node_modules). Where hls.js
// cannot run (no MediaSource, as on older iPhones; or hls.js not installed) the browser's own
// HLS plays it, if it has one. A video without HLS (processed before the mesh wrote CMAF
// fragments), or in a browser with neither, plays its MP4 renditions once ready. A video still processing is playable once the first segment of every
// rendition and of the audio is stored (SSE `video_playable`): opened while processing, it
// starts playing then, and hls.js follows its EVENT playlists as they grow until they end.

const HLS_WORKER = "/static/hls.js/hls.worker.js";
const MAX_RECOVERIES = 3;

const player = {
  id: null, // the video attached to the <video> element
  engine: null, // "hls.js" | "native" | "mp4" | null
  hls: null, // the hls.js instance
  rendition: null, // "mp4": the rendition playing
  autoplay: null, // the id of a video opened while processing: play it once playable
  broken: null, // {id, reason}: HLS failed for good for this video
  fatal: [], // fatal hls.js errors of the attached video: {type, details, code}
  recoveries: 0,
};

// A read-only view for tests and the console (the page does not use it).
window.vidmeshPlayer = Object.freeze({
  get engine() { return player.engine; },
  get videoId() { return player.id; },
  get hls() { return player.hls; },
  get fatalErrors() { return player.fatal.map((e) => ({ ...e })); },
});

function hlsjsSupported() {
  return typeof window.Hls === "function" && window.Hls.isSupported();
}

// The page's current token on a URL of this gateway: hls.js requests the URIs of the
// playlists, which carry the token they were fetched with, and the page renews its token
// before it expires.
function withToken(url) {
  const u = new URL(url, location.href);
  if (u.origin === location.origin && u.searchParams.has("token") && state.token) u.searchParams.set("token", state.token);
  return u.href;
}

function renderPlayer(v) {
  const video = $("player");
  if (player.id && player.id !== v.id) detach();
  if (v.status === "deleted" && player.engine) detach();
  if (!player.engine && v.status !== "deleted") {
    const hls = v.playable && v.playback?.hls && player.broken?.id !== v.id;
    if (hls && (hlsjsSupported() || video.canPlayType("application/vnd.apple.mpegurl"))) {
      attachHls(v, player.autoplay === v.id);
    } else if (v.status === "ready" && v.renditions?.length) {
      attachMp4(v, largest(v).name); // loaded, not started
    }
  }
  video.hidden = !player.engine;
  const note = $("player-note");
  let text = "";
  if (player.broken?.id === v.id) text = `HLS cannot play here: ${player.broken.reason}`;
  else if (!player.engine && v.status === "processing") {
    text = v.playable ? "HLS cannot play in this browser (hls.js did not load); the MP4 renditions play once ready."
      : "Plays as soon as the first segments are encoded.";
  }
  note.textContent = text;
  note.hidden = !text;
  renderQuality(v);
}

function attachHls(v, autoplay) {
  const video = $("player");
  const url = mediaUrl(v.playback.hls);
  Object.assign(player, { id: v.id, fatal: [], recoveries: 0 });
  video.dataset.videoId = v.id;
  if (!hlsjsSupported()) { // no MediaSource (older iPhones): the browser's own HLS
    player.engine = video.dataset.engine = "native";
    video.src = url;
    if (autoplay) start(video);
    return;
  }
  const Hls = window.Hls;
  const hls = new Hls({
    startPosition: 0, // a playlist still growing (EVENT) plays from its start, not its live edge
    workerPath: HLS_WORKER, // the page's CSP allows workers from 'self', not from blob: URLs
    xhrSetup: (xhr, u) => xhr.open("GET", withToken(u), true),
  });
  player.hls = hls;
  player.engine = video.dataset.engine = "hls.js";
  hls.on(Hls.Events.MANIFEST_PARSED, () => {
    renderQuality(state.videos.get(v.id));
    if (autoplay) start(video);
  });
  hls.on(Hls.Events.LEVEL_SWITCHED, (_, data) => {
    const level = hls.levels[data.level];
    if (level) video.dataset.level = levelName(level);
    renderQuality(state.videos.get(v.id));
  });
  hls.on(Hls.Events.ERROR, (_, data) => onHlsError(hls, data));
  hls.on(Hls.Events.FRAG_BUFFERED, () => { player.recoveries = 0; }); // recovered: count afresh
  hls.loadSource(url);
  hls.attachMedia(video);
}

function onHlsError(hls, data) {
  if (!data.fatal || hls !== player.hls) return; // hls.js retries what is not fatal itself
  const Hls = window.Hls;
  player.fatal.push({ type: data.type, details: data.details, code: data.response?.code ?? null });
  if (player.recoveries++ < MAX_RECOVERIES) {
    if (data.type === Hls.ErrorTypes.NETWORK_ERROR) {
      // the gateway was away, or the token expired (401): renew it and load on
      ensureToken(data.response?.code === 401)
        .then(() => { if (hls === player.hls) hls.startLoad(); })
        .catch(showError);
      return;
    }
    if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
      hls.recoverMediaError();
      return;
    }
  }
  const id = player.id;
  const fatal = player.fatal;
  detach();
  player.fatal = fatal;
  player.broken = { id, reason: data.details };
  const v = state.videos.get(id);
  if (v && state.selected === id) renderDetail(); // the MP4 renditions, if there are any
}

function attachMp4(v, name) {
  const r = v.renditions.find((x) => x.name === name);
  if (!r) return;
  const video = $("player");
  const at = player.engine === "mp4" ? video.currentTime : 0;
  const playing = !video.paused;
  Object.assign(player, { id: v.id, engine: "mp4", rendition: name });
  video.dataset.engine = "mp4";
  video.dataset.videoId = v.id;
  video.dataset.rendition = name;
  video.src = mediaUrl(r.url); // the browser seeks with Range requests on this URL
  if (at) video.addEventListener("loadedmetadata", () => { video.currentTime = at; }, { once: true });
  if (playing) start(video);
}

function detach() {
  const video = $("player");
  if (player.hls) player.hls.destroy();
  Object.assign(player, { id: null, engine: null, hls: null, rendition: null, fatal: [], recoveries: 0 });
  video.pause();
  video.removeAttribute("src");
  video.load();
  for (const key of ["engine", "level", "rendition", "videoId", "retried"]) delete video.dataset[key];
}

// Play; a browser that refuses to start with sound before the user interacted starts muted.
function start(video) {
  video.play().catch(() => {
    video.muted = true;
    return video.play();
  }).catch(() => {});
}

function largest(v) {
  return [...v.renditions].sort((a, b) => b.height - a.height)[0];
}

// A level's rendition name (`480p`) from its playlist URI `.../hls/<name>/playlist.m3u8`.
function levelName(level) {
  try {
    const parts = new URL(level.uri || level.url?.[0], location.href).pathname.split("/");
    return decodeURIComponent(parts[parts.length - 2]);
  } catch (_) {
    return `${Math.min(level.width, level.height)}p`;
  }
}

// The quality menu: Auto and each level (hls.js, switching `hls.currentLevel`), or each MP4
// rendition. Rebuilt only when its options change, so an open menu stays open.
function renderQuality(v) {
  const select = $("quality");
  let options = [];
  let current = "";
  let status = "";
  if (player.engine === "hls.js" && player.hls) {
    const hls = player.hls;
    const playing = hls.levels[hls.currentLevel];
    options.push(["-1", playing && hls.autoLevelEnabled ? `Auto (${levelName(playing)})` : "Auto"]);
    const levels = hls.levels.map((level, i) => [i, level]).sort((a, b) => b[1].height - a[1].height);
    for (const [i, level] of levels) options.push([String(i), levelName(level)]);
    current = hls.autoLevelEnabled ? "-1" : String(hls.manualLevel);
    status = v?.status === "processing" ? "HLS · still encoding" : "HLS";
  } else if (player.engine === "native") {
    options = [["-1", "Auto"]];
    current = "-1";
    status = "HLS (the browser's own player)";
  } else if (player.engine === "mp4" && v) {
    options = [...(v.renditions || [])].sort((a, b) => b.height - a.height).map((r) => [r.name, r.name]);
    current = player.rendition;
    status = "MP4";
  }
  $("player-bar").hidden = !player.engine;
  $("player-state").textContent = status;
  const key = JSON.stringify(options);
  if (select.dataset.options !== key) {
    select.replaceChildren(...options.map(([value, label]) => el("option", { value }, label)));
    select.dataset.options = key;
  }
  select.value = current;
  select.disabled = options.length < 2;
}

function chooseQuality(value) {
  if (player.engine === "hls.js" && player.hls) {
    player.hls.currentLevel = Number(value); // -1: automatic; else switch now (flushes the buffer)
    renderQuality(state.videos.get(player.id));
  } else if (player.engine === "mp4") {
    const v = state.videos.get(player.id);
    if (v) attachMp4(v, value);
    renderQuality(v);
  }
}

function setupPlayer() {
  const video = $("player");
  $("quality").addEventListener("change", (e) => chooseQuality(e.target.value));
  video.addEventListener("error", async () => {
    // MP4: most likely an expired token on a later Range request: renew it and carry on
    // (hls.js reports its own errors, see onHlsError)
    if (player.engine !== "mp4" || !state.selected) return;
    const at = video.currentTime;
    try {
      await ensureToken(true);
    } catch (err) {
      showError(err);
      return;
    }
    const v = state.videos.get(state.selected);
    const r = v?.renditions.find((x) => x.name === player.rendition);
    if (!r || video.dataset.retried === r.url) return;
    video.dataset.retried = r.url;
    video.src = mediaUrl(r.url);
    video.addEventListener("loadedmetadata", () => { video.currentTime = at; }, { once: true });
  });
  video.addEventListener("playing", () => { delete video.dataset.retried; });
}

async function deleteSelected() {
  const id = state.selected;
  if (!id || !confirm("Delete this video and all its renditions?")) return;
  try {
    await api("DELETE", `/v1/videos/${encodeURIComponent(id)}`);
    unfollow(id);
    state.selected = null;
    detach();
    state.order = state.order.filter((x) => x !== id);
    state.videos.delete(id);
    state.live.delete(id);
    $("detail").hidden = true;
    renderList();
  } catch (err) {
    showError(err);
  }
}

// --- small helpers --------------------------------------------------------------------------

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, value] of Object.entries(attrs)) node.setAttribute(k, value);
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function bytes(n) {
  if (!n && n !== 0) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}

// `code: message`. A task's message starts with its task name and often repeats the code
// after it ("chunk:3: bad_media: ..."): the code is shown once, the task name not at all
// when the caller already shows it.
function errorText(error, task) {
  let message = String(error.message || "");
  const cut = message.indexOf(": ");
  if (cut >= 0 && message.startsWith(`${error.code}: `, cut + 2)) {
    message = message.slice(0, cut + 2) + message.slice(cut + 4 + error.code.length);
  }
  if (task && message.startsWith(`${task}: `)) message = message.slice(task.length + 2);
  return `${error.code}: ${message}`;
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "";
}

function sourceLine(s) {
  if (!s) return "";
  const parts = [];
  if (s.width) parts.push(`${s.width}×${s.height}`);
  if (s.duration != null) parts.push(`${s.duration.toFixed(1)} s`);
  if (s.size != null) parts.push(bytes(s.size));
  return parts.join(", ");
}

// --- start ----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    connect($("key").value.trim(), $("remember").checked);
  });
  $("logout").addEventListener("click", logout);
  $("refresh").addEventListener("click", () => refreshList().catch(showError));
  $("d-delete").addEventListener("click", deleteSelected);
  setupDrop();
  setupPlayer();
  const saved = sessionStorage.getItem("vidmesh.key") || localStorage.getItem("vidmesh.key");
  if (saved) connect(saved, !!localStorage.getItem("vidmesh.key"));
});
