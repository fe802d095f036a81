// aqueue dashboard: live updates over server-sent events, and actions as JSON POSTs.
// The server renders every page; this script only swaps in the part that changed
// (fetched as HTML the server has escaped) and never builds HTML from data itself.
"use strict";
(function () {
  const base = document.querySelector('meta[name="dashboard-base"]').content;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const live = document.getElementById("live");
  const flash = document.getElementById("flash");
  const kinds = new Set((live && live.dataset.kinds || "").split(" ").filter(Boolean));
  let busy = false;
  let again = false;
  let deferred = false;

  function editing() {
    const el = document.activeElement;
    return el && live.contains(el) && ["INPUT", "SELECT", "TEXTAREA"].includes(el.tagName);
  }

  async function refresh() {
    if (busy) { again = true; return; }
    if (editing()) {  // never swap the form being typed in; look again in a second
      if (!deferred) { deferred = true; setTimeout(() => { deferred = false; refresh(); }, 1000); }
      return;
    }
    busy = true;
    try {
      const response = await fetch(location.href, { headers: { "X-Fragment": "1" }, credentials: "same-origin" });
      if (response.ok) {
        live.innerHTML = await response.text();
        document.body.dataset.refreshed = String(Date.now());
      }
    } finally {
      busy = false;
      if (again) { again = false; setTimeout(refresh, 300); }
    }
  }

  function say(text, ok) {
    flash.textContent = text;
    flash.className = ok ? "ok" : "bad";
    flash.hidden = false;
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.dataset || !form.dataset.action) return;
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form).entries());
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    if (form.dataset.prompt) {
      const typed = window.prompt(form.dataset.prompt);
      if (typed === null) return;
      data.confirm = typed;
    }
    if (data.terminate !== undefined) data.terminate = data.terminate === "1";
    if (data.all !== undefined) data.all = data.all === "1";
    const response = await fetch(base + "/actions/" + encodeURIComponent(form.dataset.action), {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(data),
    });
    let answer;
    try { answer = await response.json(); } catch (e) { answer = { ok: false, message: await response.text() }; }
    say(answer.message || response.statusText, response.ok && answer.ok);
    refresh();
  });

  if (live && kinds.size && window.EventSource) {
    const source = new EventSource(base + "/stream");
    source.onopen = () => { document.body.dataset.live = "1"; };
    source.onmessage = (message) => {
      let note;
      try { note = JSON.parse(message.data); } catch (e) { return; }
      // "*": the stream has just (re)connected; what changed before it did is fetched now.
      if (note.kinds.some((k) => k === "*" || kinds.has(k))) refresh();
    };
    source.onerror = () => { document.body.dataset.live = "0"; };
  }
})();
