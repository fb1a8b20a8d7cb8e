// Shared by the kiosk screens: API calls, the live WebSocket, i18n, DOM helpers.
// Money arrives formatted by the daemon (Babel); the browser never does money arithmetic
// beyond turning a typed amount into integer minor units.

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "error";
    this.action = err.action || null;
  }
}

export const state = { token: null, ui: null, lang: "en" };

export async function api(path, { method = "GET", body, token = state.token } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(`/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

export async function loadUi() {
  state.ui = await api("/ui", { token: null });
  return state.ui;
}

// Device screens pair with the daemon through the kiosk key in the URL fragment (#key=...).
// The key leaves the address bar as soon as this module runs, before anything waits.
const urlKey = new URLSearchParams(location.hash.slice(1)).get("key");
if (urlKey) {
  sessionStorage.setItem("tillbox-key", urlKey);
  history.replaceState(null, "", location.pathname);
}

// Moving between the till's own pages (cashier <-> pickup queue) keeps the staff session: the link
// hands the token over once through this tab's sessionStorage, and the next page takes it out again.
export function handOver(link) {
  link.addEventListener("click", () => { if (state.token) sessionStorage.setItem("tillbox-handover", state.token); });
}

export async function takeHandOver() {
  const token = sessionStorage.getItem("tillbox-handover");
  sessionStorage.removeItem("tillbox-handover");
  if (!token) return null;
  try { return { ...(await api("/session", { token })), token }; } catch (e) { return null; }
}

export async function pairDevice(kind) {
  const key = sessionStorage.getItem("tillbox-key");
  if (!key) throw new ApiError(401, { error: { code: "unpaired", message: "no kiosk key: open this screen with #key=..." } });
  const s = await api("/session/device", { method: "POST", body: { key, kind }, token: null });
  state.token = s.token;
  return s;
}

// The live connection: reconnects with back-off; handlers get every message by type.
export function live(handlers, { onState } = {}) {
  let delay = 500;
  let ws = null;
  let stopped = false;
  function connect() {
    if (stopped || !state.token) return;
    const proto = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(`${proto}://${location.host}/api/v1/ws`);
    ws.onopen = () => { ws.send(JSON.stringify({ token: state.token })); delay = 500; onState && onState(true); };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      const fn = handlers[msg.type] || handlers["*"];
      if (fn) fn(msg);
    };
    ws.onclose = (ev) => {
      onState && onState(false);
      if (ev.code === 4401) { handlers["session.expired"] && handlers["session.expired"]({}); return; }
      if (!stopped) setTimeout(connect, delay);
      delay = Math.min(delay * 2, 8000);
    };
  }
  connect();
  return { close() { stopped = true; if (ws) ws.close(); } };
}

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);

// "12,50" / "12.5" / "12" -> minor units (integer), or null. Exponent from the currency.
export function toMinor(text, exponent = 2) {
  const t = String(text).trim().replace(",", ".");
  const m = /^(\d{1,9})(?:\.(\d*))?$/.exec(t);
  if (!m) return null;
  const frac = (m[2] || "");
  if (frac.length > exponent) return null;
  return parseInt(m[1], 10) * 10 ** exponent + (frac ? parseInt(frac.padEnd(exponent, "0"), 10) : 0);
}

// -- i18n ------------------------------------------------------------------------------------------
const STRINGS = {};
export function addStrings(lang, table) { STRINGS[lang] = { ...(STRINGS[lang] || {}), ...table }; }
export function t(key, vars = {}) {
  const text = (STRINGS[state.lang] && STRINGS[state.lang][key]) || (STRINGS.en && STRINGS.en[key]) || key;
  return text.replace(/\{(\w+)\}/g, (_, k) => (vars[k] ?? ""));
}
export function applyI18n(root = document) {
  document.documentElement.lang = state.lang;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-label]")) el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
}
export function setLang(lang) { state.lang = lang; applyI18n(); }

// A modal dialog built from content; resolves when closed. Escape closes it.
export function modal(title, content, { onClose } = {}) {
  const dlg = h("dialog", { "aria-label": title }, h("h2", {}, title), content);
  document.body.append(dlg);
  dlg.addEventListener("close", () => { dlg.remove(); onClose && onClose(); });
  dlg.showModal();
  return dlg;
}

export function announce(region, text, level = "info") {
  region.textContent = text;
  region.className = `notice ${level}`;
  region.classList.toggle("hidden", !text);
}
