// carapace web: the chat page (history, live replies over server-sent events, files, card
// buttons, typing state) and the live log on the health page. No framework, no build step.
"use strict";
(function () {
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify(body),
    });
  }

  function textOf(content) {
    if (content && typeof content === "object") {
      if (content.type === "ask_question") {
        return [content.title, content.question].filter(Boolean).join("\n");
      }
      return content.text || content.markdown || JSON.stringify(content);
    }
    return String(content);
  }

  const chat = document.querySelector("section.chat");
  if (chat) {
    const pid = chat.dataset.chat;
    const log = document.getElementById("log");
    const typing = document.getElementById("typing");
    const seen = new Map();
    let oldest = null;

    function render(m) {
      const li = el("li", { class: "msg " + m.direction, "data-id": String(m.id) });
      const who = m.direction === "in" ? "You" : "Agent";
      li.appendChild(el("span", { class: "who" }, who));
      li.appendChild(el("time", { datetime: m.at }, (m.at || "").replace("T", " ").slice(0, 19)));
      li.appendChild(el("div", { class: "text" }, textOf(m.content)));
      const c = m.content || {};
      if (c.type === "ask_question" && Array.isArray(c.options) && c.options.length) {
        const box = el("div", { class: "buttons", role: "group", "aria-label": "Answer" });
        c.options.forEach((o, i) => {
          const b = el("button", { type: "button", class: i === 0 ? "primary" : "" }, o.label || o.value);
          b.addEventListener("click", async () => {
            box.querySelectorAll("button").forEach((x) => (x.disabled = true));
            const r = await post("/api/action", { card: c.questionId, index: i, chat: pid });
            const out = await r.json().catch(() => ({}));
            box.appendChild(el("p", { class: "outcome", role: "status" }, out.message || out.status || out.error || ""));
            if (!r.ok || !["approved", "rejected", "answered", "pending"].includes(out.status)) {
              box.querySelectorAll("button").forEach((x) => (x.disabled = false));
            }
          });
          box.appendChild(b);
        });
        li.appendChild(box);
      }
      if (Array.isArray(c.reactions) && c.reactions.length) {
        li.appendChild(el("span", { class: "reactions" }, c.reactions.join(" ")));
      }
      for (const f of m.files || []) {
        const a = el("a", { href: "/files/" + f.id, download: f.name, class: "file" }, "📎 " + f.name);
        li.appendChild(a);
      }
      return li;
    }

    function add(m, atTop) {
      if (m.chat !== pid) return;
      const node = render(m);
      const old = seen.get(m.id);
      if (old) { old.replaceWith(node); } else if (atTop) { log.insertBefore(node, log.firstChild); } else { log.appendChild(node); }
      seen.set(m.id, node);
      if (oldest === null || m.id < oldest) oldest = m.id;
      if (!atTop) node.scrollIntoView({ block: "end" });
      if (m.direction === "out") typing.hidden = true;
    }

    async function loadHistory(before) {
      const q = "/api/history?chat=" + encodeURIComponent(pid) + (before ? "&before=" + before : "");
      const r = await fetch(q, { credentials: "same-origin" });
      if (!r.ok) return;
      const data = await r.json();
      const msgs = data.messages || [];
      if (before) { for (const m of msgs.slice().reverse()) add(m, true); } else { for (const m of msgs) add(m, false); }
      document.getElementById("older").hidden = !data.more;
    }

    document.getElementById("older").addEventListener("click", () => loadHistory(oldest));
    loadHistory(null).then(() => {
      const es = new EventSource("/api/events?chat=" + encodeURIComponent(pid));
      es.onmessage = (ev) => {
        const e = JSON.parse(ev.data);
        if (e.type === "message") add(e.message, false);
        else if (e.type === "typing") typing.hidden = !e.on;
        else if (e.type === "edit") {
          const node = seen.get(e.id);
          if (node) {
            const m = { id: e.id, chat: pid, direction: "out", content: e.content, at: node.querySelector("time").getAttribute("datetime"), files: [] };
            add(m, false);
          }
        }
      };
      chat.dataset.live = "1";
    });

    const form = document.getElementById("composer");
    if (form) {
      const text = document.getElementById("text");
      const files = document.getElementById("files");
      text.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); }
      });
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const list = [];
        for (const f of files.files) {
          const buf = new Uint8Array(await f.arrayBuffer());
          let bin = "";
          for (let i = 0; i < buf.length; i += 0x8000) bin += String.fromCharCode.apply(null, buf.subarray(i, i + 0x8000));
          list.push({ name: f.name, data: btoa(bin) });
        }
        if (!text.value.trim() && !list.length) return;
        const r = await post(form.dataset.send, { text: text.value, files: list });
        const out = await r.json().catch(() => ({}));
        if (r.ok) {
          text.value = ""; files.value = "";
          typing.hidden = !(out.routed && out.routed.length);
          if (out.dropped) log.appendChild(el("li", { class: "msg note", role: "status" }, "Not delivered to the agent: " + out.dropped));
        } else {
          log.appendChild(el("li", { class: "msg note", role: "alert" }, "Not sent: " + (out.error || r.status)));
        }
      });
    }
  }

  const live = document.getElementById("log-lines");
  if (live && live.dataset.live) {
    setInterval(async () => {
      const r = await fetch(live.dataset.live, { credentials: "same-origin" });
      if (!r.ok) return;
      const h = await r.json();
      live.replaceChildren(...h.log.map((x) => el("li", { class: "lv-" + x.level.toLowerCase() }, x.line)));
    }, 3000);
  }
})();
