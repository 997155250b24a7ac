// clip-rt search page: plain JavaScript, no build step, nothing loaded from the network but this server.
// The query and filters live in the URL (?q=&w=&folder=&after=&before=&camera=&like=), so reload, the back button
// and a shared link restore them; a query photo (dropped, pasted or chosen) is kept in the page's history entry.
"use strict";
(() => {
  const PAGE = 60;  // results per request; scrolling to the end asks for the next PAGE
  const $ = (id) => document.getElementById(id);
  const grid = $("grid"), status = $("status"), form = $("search"), q = $("q");
  const images = new Map();  // history key -> base64 of a query photo (too big for the URL)
  let token = sessionStorage.getItem("clip-rt-token") || "";
  let kind = "images", state = {}, results = [], exhausted = false, loading = false, seq = 0, current = -1;

  // -- the server ---------------------------------------------------------------------------------------------
  const withToken = (url) => token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
  async function api(path, body) {
    const headers = body ? {"content-type": "application/json"} : {};
    if (token) headers.authorization = "Bearer " + token;
    const r = await fetch(path, body ? {method: "POST", headers, body: JSON.stringify(body)} : {headers});
    const data = await r.json().catch(() => ({error: r.statusText}));
    if (!r.ok) throw new Error(data.error || data.detail || ("HTTP " + r.status));
    return data;
  }

  // -- state <-> URL ------------------------------------------------------------------------------------------
  const KEYS = ["q", "w", "folder", "after", "before", "camera", "like"];
  function fromURL() {
    const p = new URLSearchParams(location.search);
    if (p.has("token")) {  // a link with the token: keep it for this tab, drop it from the address bar
      token = p.get("token");
      sessionStorage.setItem("clip-rt-token", token);
      p.delete("token");
      history.replaceState(history.state, "", p.toString() ? "?" + p.toString() : location.pathname);
    }
    const s = {};
    for (const k of KEYS) if (p.get(k)) s[k] = p.get(k);
    const key = history.state && history.state.image;
    if (key && images.has(key)) s.image = key;
    return s;
  }
  function toURL(s, push) {
    const p = new URLSearchParams();
    for (const k of KEYS) if (s[k] !== undefined && s[k] !== "") p.set(k, s[k]);
    const qs = p.toString();
    const url = qs ? "?" + qs : location.pathname;
    const sameImage = ((history.state || {}).image || null) === (s.image || null);
    if (push && (qs ? "?" + qs : "") === location.search && sameImage) return;  // the same search: no new entry
    history[push ? "pushState" : "replaceState"]({image: s.image || null}, "", url);
  }
  function showState(s) {
    q.value = s.q || "";
    for (const k of ["folder", "after", "before", "camera"]) $(k).value = s[k] || "";
    $("weight").value = s.w || "0.5";
    $("weight-value").textContent = Number($("weight").value).toFixed(2);
    const img = s.image && images.get(s.image);
    $("query-image").hidden = !img;
    if (img) $("query-thumb").src = "data:image/*;base64," + img;
    $("weight-box").hidden = !(img && s.q);
    $("like-banner").hidden = !s.like;
  }
  function readForm() {
    const s = {q: q.value.trim(), w: $("weight").value, image: state.image, like: state.like};
    for (const k of ["folder", "after", "before", "camera"]) s[k] = $(k).value;
    if (s.w === "0.5" || !(s.image && s.q)) delete s.w;
    return s;
  }

  // -- searching ----------------------------------------------------------------------------------------------
  function body(s, topK) {
    const b = {top_k: topK};
    if (s.like) b.like = Number(s.like);
    else {
      if (s.q) b.text = s.q;
      if (s.image) b.image = images.get(s.image);
      if (s.q && s.image) b.text_weight = Number(s.w || 0.5);
    }
    if (kind === "images") for (const k of ["folder", "after", "before", "camera"]) if (s[k]) b[k] = s[k];
    return b;
  }
  const hasQuery = (s) => Boolean(s.q || s.image || s.like);

  async function run(s, more) {
    const mine = ++seq;
    if (!more) {
      performance.clearMarks("clip-rt:search");
      performance.mark("clip-rt:search");
      results = []; exhausted = false; grid.replaceChildren(); window.scrollTo(0, 0);
    }
    showState(s);
    if (!hasQuery(s)) { setStatus(""); document.body.dataset.seq = String(mine); return; }
    loading = true;
    document.body.dataset.busy = "1";
    const want = results.length + PAGE;
    const t0 = performance.now();
    try {
      const data = await api("search", body(s, want));
      if (mine !== seq) return;  // a newer search started meanwhile
      const fresh = data.results.slice(results.length);
      exhausted = data.results.length < want;
      const first = results.length;
      results = data.results;
      render(fresh, first);
      if (s.like && !more) {
        $("like-name").textContent = "#" + s.like;
        api("item/" + s.like).then((d) => { $("like-name").textContent = baseName(d.file); }).catch(() => null);
      }
      setStatus(`${results.length}${exhausted ? "" : "+"} result${results.length === 1 ? "" : "s"} \u00b7 ` +
                `${Math.round(performance.now() - t0)} ms`);
      if (!more) painted(mine);
      else document.body.dataset.seq = String(mine);
    } catch (e) {
      if (mine === seq) { setStatus(e.message, true); document.body.dataset.seq = String(mine); }
    } finally {
      if (mine === seq) { loading = false; delete document.body.dataset.busy; }
    }
  }

  function painted(mine) {
    // The first thumbnails painted: the first row's images decoded, then two animation frames (the second one
    // runs after the frame that showed them). performance.measure keeps Enter -> painted for benchmarks.
    const imgs = [...grid.querySelectorAll("img")].slice(0, 8);
    Promise.all(imgs.map((im) => im.decode().catch(() => null))).then(() => requestAnimationFrame(() =>
      requestAnimationFrame(() => {
        if (mine !== seq) return;
        performance.clearMarks("clip-rt:painted");
        performance.mark("clip-rt:painted");
        performance.clearMeasures("clip-rt:search-to-thumbs");
        const m = performance.measure("clip-rt:search-to-thumbs", "clip-rt:search", "clip-rt:painted");
        window.clipRtLastMs = m.duration;
        document.body.dataset.seq = String(mine);
      })));
  }

  const baseName = (path) => path.split(/[\\/]/).pop();
  function render(list, first) {
    const frag = document.createDocumentFragment();
    list.forEach((r, j) => {
      const li = document.createElement("li");
      li.tabIndex = 0;
      li.dataset.index = String(first + j);
      li.dataset.id = String(r.id);
      li.dataset.score = r.score.toFixed(4);
      li.title = r.file;
      if (kind === "images") {
        const img = document.createElement("img");
        img.src = withToken("thumb/" + r.id);
        // an index built with --no-thumbnails: the photo itself (a video frame has no file of its own: its time)
        img.onerror = () => { img.onerror = null; if (r.time == null) img.src = withToken("photo/" + r.id); };
        img.alt = baseName(r.file);
        if (first + j >= 24) img.loading = "lazy";
        li.append(img);
      } else {
        li.append(document.createTextNode(r.file));
      }
      if (r.time != null) {  // a video frame: where in the video it is
        const at = document.createElement("span");
        at.className = "time";
        at.textContent = "\u25b6 " + clock(r.time);
        li.append(at);
        li.title = r.file + " at " + clock(r.time);
      }
      const sc = document.createElement("span");
      sc.className = "score";
      sc.textContent = r.score.toFixed(3);
      li.append(sc);
      frag.append(li);
    });
    grid.append(frag);
  }
  const count = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  function clock(s) {  // seconds -> m:ss.s (h:mm:ss.s past an hour)
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = (s % 60).toFixed(1).padStart(4, "0");
    return (h ? h + ":" + String(m).padStart(2, "0") : String(m)) + ":" + sec;
  }
  function setStatus(text, error) { status.textContent = text; status.classList.toggle("error", Boolean(error)); }

  function search(push) {
    state = readForm();
    if (!state.image && !state.q && !state.like) delete state.like;
    toURL(state, push);
    run(state, false);
  }

  // -- the detail view ----------------------------------------------------------------------------------------
  async function open(i) {
    if (i < 0 || i >= results.length) return;
    current = i;
    const r = results[i];
    if (kind !== "images") { like(r.id); return; }
    $("detail").hidden = false;
    const video = $("detail-video"), isVideo = r.time != null;
    $("detail-img").hidden = isVideo;
    video.hidden = !isVideo;
    $("detail-time-row").hidden = !isVideo;
    $("detail-time").hidden = !isVideo;
    if (isVideo) {
      // The frame's moment: the media fragment #t= seeks there, and currentTime again once the metadata is in
      // (a browser that ignores the fragment, or a URL it already had open).
      $("detail-img").removeAttribute("src");
      video.src = withToken("video/" + r.id) + "#t=" + r.time.toFixed(3);
      video.dataset.time = String(r.time);
      video.onloadedmetadata = () => {
        if (Math.abs(video.currentTime - r.time) > 0.05) video.currentTime = r.time;
        video.play().catch(() => null);
      };
      $("detail-time").textContent = clock(r.time) + " (" + r.time.toFixed(2) + " s)";
      $("open-full").href = withToken("video/" + r.id) + "#t=" + r.time.toFixed(3);
      $("open-full").textContent = "open the video";
    } else {
      video.pause(); video.removeAttribute("src");
      $("detail-img").src = withToken("photo/" + r.id);
      $("open-full").href = withToken("photo/" + r.id);
      $("open-full").textContent = "open the photo";
    }
    $("detail-img").alt = baseName(r.file);
    $("detail-name").textContent = baseName(r.file);
    $("detail-path").textContent = r.file;
    $("detail-score").textContent = r.score.toFixed(4);
    for (const k of ["date", "size", "camera"]) $("detail-" + k).textContent = "\u2026";
    $("like").focus();
    try {
      const d = await api("item/" + r.id);
      if (current !== i) return;
      const when = d.date ? d.date.replace("T", " ") + (d.date_source === "file" ? " (file time)" : "") : "unknown";
      $("detail-date").textContent = when;
      const px = d.width ? `${d.width} \u00d7 ${d.height} px` : "";
      const bytes = d.size != null ? formatBytes(d.size) : "";
      $("detail-size").textContent = [px, bytes].filter(Boolean).join(", ") || "unknown";
      $("detail-camera").textContent = d.camera || "unknown";
    } catch (e) {
      $("detail-date").textContent = e.message;
    }
  }
  function close() {
    $("detail").hidden = true;
    $("detail-img").removeAttribute("src");
    $("detail-video").pause();
    $("detail-video").removeAttribute("src");
    const li = grid.children[current];
    if (li) li.focus();
  }
  function like(id) {
    $("detail").hidden = true;
    state = {...readForm(), q: "", image: undefined, like: String(id)};
    delete state.w;
    toURL(state, true);
    run(state, false);
  }
  function formatBytes(n) {
    return n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : n >= 1024 ? Math.round(n / 1024) + " KiB" : n + " B";
  }

  // -- a query photo: drop, paste, or choose ------------------------------------------------------------------
  function setImage(file) {
    if (!file || !file.type.startsWith("image/")) { setStatus("that is not an image file", true); return; }
    const reader = new FileReader();
    reader.onload = () => {
      const key = "img" + Date.now();
      images.set(key, String(reader.result).split(",", 2)[1]);
      state = {...readForm(), image: key, like: undefined};
      toURL(state, true);
      run(state, false);
    };
    reader.readAsDataURL(file);
  }
  $("file").addEventListener("change", (e) => { setImage(e.target.files[0]); e.target.value = ""; });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData || {items: []}).items].find((x) => x.type.startsWith("image/"));
    if (item) { e.preventDefault(); setImage(item.getAsFile()); }
  });
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) document.body.classList.remove("dragging"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    if (e.dataTransfer.files.length) setImage(e.dataTransfer.files[0]);
  });
  $("clear-image").addEventListener("click", () => { state.image = undefined; search(true); });

  // -- events -------------------------------------------------------------------------------------------------
  form.addEventListener("submit", (e) => { e.preventDefault(); state.like = undefined; search(true); });
  for (const k of ["folder", "after", "before", "camera"]) $(k).addEventListener("change", () => search(true));
  $("weight").addEventListener("input", () => {
    $("weight-value").textContent = Number($("weight").value).toFixed(2);
  });
  $("weight").addEventListener("change", () => search(true));
  $("clear-filters").addEventListener("click", () => {
    for (const k of ["folder", "after", "before", "camera"]) $(k).value = "";
    search(true);
  });
  $("clear-like").addEventListener("click", () => { state.like = undefined; search(true); });
  $("like").addEventListener("click", () => like(results[current].id));
  $("close").addEventListener("click", close);
  $("detail").addEventListener("click", (e) => { if (e.target === $("detail")) close(); });
  grid.addEventListener("click", (e) => { const li = e.target.closest("li"); if (li) open(Number(li.dataset.index)); });
  window.addEventListener("popstate", () => { state = fromURL(); run(state, false); });

  function columns() {
    const items = grid.children;
    let n = 0;
    while (n < items.length && items[n].offsetTop === items[0].offsetTop) n++;
    return Math.max(1, n);
  }
  document.addEventListener("keydown", (e) => {
    if (!$("detail").hidden) {
      if (e.key === "Escape") close();
      else if (e.key === "ArrowRight") open(current + 1);
      else if (e.key === "ArrowLeft") open(current - 1);
      else return;
      e.preventDefault();
      return;
    }
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (e.key === "/" && !typing) { e.preventDefault(); q.focus(); q.select(); return; }
    const li = document.activeElement.closest && document.activeElement.closest("#grid li");
    if (e.key === "ArrowDown" && document.activeElement === q && grid.children.length) {
      e.preventDefault(); grid.children[0].focus(); return;
    }
    if (!li) return;
    const i = Number(li.dataset.index);
    const step = {ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns()}[e.key];
    if (step !== undefined) {
      e.preventDefault();
      const next = grid.children[i + step];
      if (next) next.focus();
      else if (step < 0) q.focus();
    } else if (e.key === "Enter") {
      e.preventDefault(); open(i);
    }
  });

  new IntersectionObserver((entries) => {
    if (entries.some((x) => x.isIntersecting) && !loading && !exhausted && results.length && hasQuery(state)) {
      run(state, true);
    }
  }, {rootMargin: "400px"}).observe($("more"));

  // -- start: the filter values, then whatever the URL asks for -----------------------------------------------
  async function start() {
    state = fromURL();
    showState(state);
    try {
      const f = await api("facets");
      kind = f.kind;
      document.body.classList.toggle("texts", kind !== "images");
      for (const x of f.folders || []) $("folder").append(new Option(`${x.folder} (${x.count})`, x.folder));
      for (const x of f.cameras || []) $("camera").append(new Option(`${x.camera} (${x.count})`, x.camera));
      for (const k of ["after", "before"]) {
        if (f.dates && f.dates.first) $(k).min = f.dates.first;
        if (f.dates && f.dates.last) $(k).max = f.dates.last;
      }
      q.placeholder = kind === "images" ? q.placeholder : "Find texts: type, or drop / paste a photo";
      setStatus(kind !== "images" ? `${f.count} texts indexed` : !f.videos ? `${f.count} photos indexed` :
                `${count(f.count - f.frames, "photo")} and ${count(f.videos, "video")} (${count(f.frames, "frame")}) ` +
                "indexed");
    } catch (e) {
      setStatus(e.message, true);
    }
    showState(state);
    document.body.dataset.ready = "1";
    if (hasQuery(state)) run(state, false);
    else q.focus();
  }
  start();
})();
