// The pickup queue: online orders to pick, hand over (pickup code or ID check) or pack and ship.
// Searchable by order number, name or a scanned QR code; live over the WebSocket.
import { $, ApiError, addStrings, announce, api, applyI18n, h, handOver, live, loadUi, modal, state, t, takeHandOver, toMinor } from "/static/common.js";

addStrings("en", {
  title: "Pickup queue", back: "Back to the till", logout: "Log out", login_title: "Staff login", staff_id: "Staff ID",
  pin: "PIN", login: "Log in", search_label: "Order number, name or QR code",
  search_placeholder: "Order number, name or scan the QR code", find: "Find", show_all: "Collected, shipped and expired too",
  order: "Order", customer: "Customer", kind: "Kind", status: "Status", picked: "Picked", hold_until: "Hold until",
  empty: "No orders waiting.", item: "Item", ordered: "Ordered", pick: "Pick", history: "History",
  pickup: "Pickup", ship: "Ship", placed: "placed", picking: "picking", ready: "ready", packed: "packed",
  collected: "collected", shipped: "shipped", expired: "expired", cancelled: "cancelled",
  all_picked: "Picked", set: "Set", ready_btn: "Mark ready", short: "Some lines are short: hand over what was picked",
  pack_btn: "Packed", slip_btn: "Print packing slip", tracking: "Tracking reference", carrier: "Carrier",
  ship_btn: "Mark shipped", code: "Pickup code or QR code", handover_code: "Hand over: code", handover_id: "ID checked: hand over",
  cancel_btn: "Cancel order", reason: "Reason", approver: "Supervisor ID", approver_pin: "Supervisor PIN", ok: "OK",
  payment: "Payment", paid: "Paid online", at_pickup: "To pay at pickup: {due}", cash: "Cash", card: "Card",
  tendered: "Cash given", total: "Total", placed_at: "Placed", pending: "{n} change(s) not yet confirmed by the shop",
  handed: "Order {id} handed over.", readied: "Order {id} is ready: the shop tells the customer.",
  shipped_msg: "Order {id} shipped.", printed: "Packing slip printed.", not_printed: "Not printed: {error}",
  scanned: "Scanned order {id}.", attempts: "{n} of {max} wrong codes so far", address: "Ship to", slip: "Packing slip",
  change: "Change: {amount}", close: "Close", approval: "Needs a supervisor: enter their ID and PIN.", shop: "Shop",
});
addStrings("de", {
  title: "Abholaufträge", back: "Zurück zur Kasse", logout: "Abmelden", login_title: "Anmeldung", staff_id: "Personalnummer",
  pin: "PIN", login: "Anmelden", search_label: "Bestellnummer, Name oder QR-Code",
  search_placeholder: "Bestellnummer, Name oder QR-Code scannen", find: "Suchen", show_all: "Auch abgeholte, versandte und abgelaufene",
  order: "Bestellung", customer: "Kunde", kind: "Art", status: "Status", picked: "Kommissioniert", hold_until: "Abholbar bis",
  empty: "Keine offenen Bestellungen.", item: "Artikel", ordered: "Bestellt", pick: "Kommissionieren", history: "Verlauf",
  pickup: "Abholung", ship: "Versand", placed: "eingegangen", picking: "in Arbeit", ready: "abholbereit", packed: "gepackt",
  collected: "abgeholt", shipped: "versandt", expired: "abgelaufen", cancelled: "storniert",
  all_picked: "Alles", set: "Setzen", ready_btn: "Abholbereit", short: "Fehlmengen: das Kommissionierte ausgeben",
  pack_btn: "Gepackt", slip_btn: "Packzettel drucken", tracking: "Sendungsnummer", carrier: "Versanddienst",
  ship_btn: "Versendet", code: "Abholcode oder QR-Code", handover_code: "Ausgeben: Code", handover_id: "Ausweis geprüft: ausgeben",
  cancel_btn: "Stornieren", reason: "Grund", approver: "Personalnummer Aufsicht", approver_pin: "PIN Aufsicht", ok: "OK",
  payment: "Zahlung", paid: "Online bezahlt", at_pickup: "Bei Abholung zu zahlen: {due}", cash: "Bar", card: "Karte",
  tendered: "Gegeben", total: "Summe", placed_at: "Bestellt", pending: "{n} Änderung(en) noch nicht vom Shop bestätigt",
  handed: "Bestellung {id} ausgegeben.", readied: "Bestellung {id} ist abholbereit: der Shop benachrichtigt die Kundschaft.",
  shipped_msg: "Bestellung {id} versandt.", printed: "Packzettel gedruckt.", not_printed: "Nicht gedruckt: {error}",
  scanned: "Bestellung {id} gescannt.", attempts: "{n} von {max} falschen Codes", address: "Lieferadresse", slip: "Packzettel",
  change: "Rückgeld: {amount}", close: "Schließen", approval: "Aufsicht nötig: Personalnummer und PIN eingeben.", shop: "Shop",
});

let conn = null;
let current = null;   // the open order's view
let exponent = 2;

function notify(text, level = "error") { announce($("#notice"), text, level); }
const enc = encodeURIComponent;

function show(section) {
  $("#login").classList.toggle("hidden", section !== "login");
  $("#queue").classList.toggle("hidden", section !== "queue");
  $("#logout").classList.toggle("hidden", section === "login");
  (section === "login" ? $("#staff-id") : $("#search")).focus();
}

// -- login ---------------------------------------------------------------------------------------
$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const s = await api("/session/pin", { method: "POST", body: { staff_id: $("#staff-id").value.trim(), pin: $("#pin").value }, token: null });
    announce($("#login-notice"), "");
    await enter(s);
  } catch (e) { $("#pin").value = ""; announce($("#login-notice"), e.message, "error"); }
});

async function enter(session) {
  state.token = session.token;
  $("#who").textContent = `${session.staff.name} (${session.staff.role})`;
  if (conn) conn.close();
  conn = live(handlers, { onState: (up) => { const c = $("#conn"); c.textContent = up ? "live" : "offline"; c.className = `badge-health ${up ? "ok" : "unavailable"}`; } });
  show("queue");
  await refresh();
}

function loggedOut(message) {
  state.token = null;
  current = null;
  if (conn) { conn.close(); conn = null; }
  $("#who").textContent = "";
  $("#pin").value = "";
  $("#detail").classList.add("hidden");
  if (message) announce($("#login-notice"), message, "error");
  show("login");
}

$("#logout").addEventListener("click", async () => { try { await api("/session", { method: "DELETE" }); } catch (e) { /* gone */ } loggedOut(); });

// -- live ----------------------------------------------------------------------------------------
const handlers = {
  orders(msg) { refresh(msg.id || null); },
  catalog(msg) { if (msg.kind === "orders") refresh(); },
  "order.scanned"(msg) { notify(t("scanned", { id: msg.id }), "info"); open(msg.id, msg.code); },
  notice(msg) { notify(msg.message, msg.level === "info" ? "info" : "error"); },
  "session.expired"() { loggedOut("Your session expired; log in again."); },
};

// -- the queue -----------------------------------------------------------------------------------
function statusChip(status) { return h("span", { class: `status ${status}` }, t(status)); }

async function refresh(changedId = null) {
  if (!state.token) return;
  const q = $("#search").value.trim();
  const params = new URLSearchParams({ q, all: $("#show-all").checked ? "true" : "false" });
  try {
    const { orders } = await api(`/orders?${params}`);
    renderList(orders);
    if (current && (changedId === null || changedId === current.id)) await open(current.id, null, false);
  } catch (e) { if (e.status === 401) loggedOut(e.message); else notify(e.message); }
}

function renderList(orders) {
  const body = $("#orders tbody");
  body.replaceChildren(...orders.map((o) => h("tr", {
    "data-order": o.id, tabindex: "0", class: current && current.id === o.id ? "selected" : "",
    onclick: () => open(o.id), onkeydown: (ev) => { if (ev.key === "Enter") open(o.id); },
  },
  h("td", {}, o.id), h("td", {}, o.customer), h("td", {}, t(o.kind)), h("td", {}, statusChip(o.status)),
  h("td", { class: "num" }, `${o.picked_lines}/${o.lines.length}`), h("td", {}, o.hold_until_text || "–"))));
  $("#empty").classList.toggle("hidden", orders.length > 0);
}

$("#search-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("#search").value.trim();
  await refresh();
  if (text.toUpperCase().startsWith("TBO:")) {   // a scanned QR code: open the order with its code filled in
    const id = text.slice(4, text.lastIndexOf(":"));
    if (id) await open(id, text);
  }
});
$("#show-all").addEventListener("change", () => refresh());

async function open(id, code = null, announceErrors = true) {
  try {
    current = await api(`/orders/${enc(id)}`);
  } catch (e) { if (announceErrors) notify(e.message); return; }
  for (const tr of document.querySelectorAll("#orders tbody tr")) tr.classList.toggle("selected", tr.dataset.order === id);
  renderDetail(current);
  if (code && $("#handover-code")) $("#handover-code").value = code;
}

// -- one order -----------------------------------------------------------------------------------
function facts(pairs) {
  $("#detail-facts").replaceChildren(...pairs.filter(([, v]) => v).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

// A live update re-renders the order: what staff typed into it (and did not send yet) is kept.
function typedValues() {
  const out = [];
  for (const el of document.querySelectorAll("#detail input:not([type=checkbox])")) {
    if (el.value !== el.defaultValue) out.push([el.id ? `#${el.id}` : `input[data-qty="${el.dataset.qty}"]`, el.value]);
  }
  return out;
}

let shown = "";   // the detail on screen, to skip re-rendering an unchanged order (keeps focus and typing)

function renderDetail(o) {
  const signature = JSON.stringify(o);
  if (signature === shown && !$("#detail").classList.contains("hidden")) return;
  shown = signature;
  const typed = $("#detail").dataset.order === o.id ? typedValues() : [];
  $("#detail").dataset.order = o.id;
  $("#detail").classList.remove("hidden");
  $("#detail-title").textContent = `${t("order")} ${o.id} · ${t(o.kind)}`;
  $("#detail-status").replaceChildren(statusChip(o.status));
  const addr = o.ship_to ? [o.ship_to.name, o.ship_to.company, ...o.ship_to.lines, `${o.ship_to.postcode || ""} ${o.ship_to.city}`, o.ship_to.country].filter(Boolean).join(", ") : null;
  const payment = o.payment === "at_pickup" ? t("at_pickup", { due: o.due ? o.due.text : (o.total_text || "–") }) : t("paid");
  facts([[t("customer"), o.customer], [t("placed_at"), o.time_text], [t("hold_until"), o.hold_until_text],
    [t("payment"), payment], [t("total"), o.total_text], [t("address"), addr], [t("carrier"), o.carrier],
    [t("tracking"), o.tracking], [t("shop"), o.pending ? t("pending", { n: o.pending }) : null]]);
  const picking = o.open && ["placed", "picking"].includes(o.status);
  $("#lines tbody").replaceChildren(...o.lines.map((ln) => h("tr", { "data-line": ln.line },
    h("td", {}, ln.line), h("td", {}, ln.name, h("div", { class: "muted" }, ln.sku)),
    h("td", { class: "num" }, ln.qty_text), h("td", { class: "num" }, ln.picked_text),
    h("td", {}, picking ? pickControls(o, ln) : ""))));
  renderActions(o);
  for (const [sel, value] of typed) if ($(sel)) $(sel).value = value;
  $("#history").replaceChildren(...(o.history || []).map((e) => h("li", {},
    `${e.time_text} · ${e.action} → ${t(e.status)} · ${e.device || ""} ${e.staff || ""}${e.note ? ` · ${e.note}` : ""}`)));
}

function pickControls(o, ln) {
  const qty = h("input", { type: "text", inputmode: "decimal", value: ln.picked, "aria-label": `${t("picked")} ${ln.name}`, "data-qty": ln.line });
  return h("div", { class: "pick" },
    h("button", { type: "button", class: "primary", "data-pick": ln.line, onclick: () => pick(o.id, ln.line, ln.qty) }, t("all_picked")),
    qty, h("button", { type: "button", "data-set": ln.line, onclick: () => pick(o.id, ln.line, qty.value.trim().replace(",", ".")) }, t("set")));
}

async function act(fn, okText) {
  try {
    const out = await fn();
    if (okText) notify(okText, "info");
    return out;
  } catch (e) { notify(e.message); return null; }
}

async function pick(id, line, picked) {
  const o = await act(() => api(`/orders/${enc(id)}/picks`, { method: "POST", body: { lines: [{ line, picked }] } }));
  if (o) { current = o; renderDetail(o); }
}

function button(id, label, onclick, cls = "") { return h("button", { id, type: "button", class: cls, onclick }, label); }

function renderActions(o) {
  const box = $("#actions");
  box.replaceChildren();
  if (!o.open) return;
  const short = h("input", { id: "short", type: "checkbox" });
  if (o.kind === "pickup" && ["placed", "picking"].includes(o.status)) {
    box.append(h("label", { class: "check" }, short, t("short")),
      button("b-ready", t("ready_btn"), async () => {
        const out = await act(() => api(`/orders/${enc(o.id)}/ready`, { method: "POST", body: { short: short.checked } }), t("readied", { id: o.id }));
        if (out) { current = out; renderDetail(out); }
      }, "primary"));
  }
  if (o.kind === "pickup" && o.status === "ready") box.append(handOverBlock(o));
  if (o.kind === "ship" && ["placed", "picking"].includes(o.status)) {
    box.append(h("label", { class: "check" }, short, t("short")),
      button("b-pack", t("pack_btn"), async () => {
        const out = await act(() => api(`/orders/${enc(o.id)}/pack`, { method: "POST", body: { short: short.checked } }));
        if (out) { current = out; renderDetail(out); }
      }, "primary"));
  }
  if (o.kind === "ship") box.append(button("b-slip", t("slip_btn"), () => printSlip(o)));
  if (o.kind === "ship" && o.status === "packed") {
    const tracking = h("input", { id: "tracking", maxlength: "64", placeholder: t("tracking"), "aria-label": t("tracking") });
    const carrier = h("input", { id: "carrier", maxlength: "64", placeholder: t("carrier"), "aria-label": t("carrier"), value: o.carrier || "" });
    box.append(h("div", { class: "grid two" }, tracking, carrier),
      button("b-ship", t("ship_btn"), async () => {
        const out = await act(() => api(`/orders/${enc(o.id)}/ship`, { method: "POST", body: { tracking: tracking.value.trim(), carrier: carrier.value.trim() || null } }), t("shipped_msg", { id: o.id }));
        if (out) { current = out; renderDetail(out); }
      }, "primary"));
  }
  box.append(button("b-cancel", t("cancel_btn"), () => cancelOrder(o), "danger"));
}

function handOverBlock(o) {
  const code = h("input", { id: "handover-code", maxlength: "80", autocomplete: "off", placeholder: t("code"), "aria-label": t("code") });
  const parts = [code];
  let payment = null;
  let tendered = null;
  if (o.payment === "at_pickup") {
    payment = h("select", { id: "payment", "aria-label": t("payment") }, h("option", { value: "cash" }, t("cash")), h("option", { value: "card" }, t("card")));
    tendered = h("input", { id: "tendered", inputmode: "decimal", placeholder: o.cash_due ? o.cash_due.text : "", "aria-label": t("tendered") });
    parts.push(h("p", { class: "due" }, t("at_pickup", { due: o.due ? o.due.text : "–" })), h("div", { class: "grid two" }, payment, tendered));
  }
  if (o.code_failures) parts.push(h("p", { class: "bad" }, t("attempts", { n: o.code_failures, max: o.code_attempts })));
  const go = async (check) => {
    const body = { check, code: check === "code" ? code.value.trim() : null };
    if (payment) {
      body.payment = payment.value;
      if (payment.value === "cash" && tendered.value.trim()) {
        body.tendered = toMinor(tendered.value, exponent);
        if (body.tendered === null) return notify("Enter the cash given, e.g. 20.00");
      }
    }
    const out = await act(() => api(`/orders/${enc(o.id)}/handover`, { method: "POST", body }), t("handed", { id: o.id }));
    if (!out) { await open(o.id, null, false); return; }
    current = out.order;
    renderDetail(out.order);
    if (out.receipt && out.receipt.change && out.receipt.change.minor) notify(`${t("handed", { id: o.id })} ${t("change", { amount: out.receipt.change.text })}`, "info");
  };
  parts.push(h("div", { class: "grid two" },
    button("b-handover-code", t("handover_code"), () => go("code"), "primary"),
    o.id_check ? button("b-handover-id", t("handover_id"), () => go("id")) : ""));
  return h("div", { class: "grid" }, ...parts);
}

async function printSlip(o) {
  const out = await act(() => api(`/orders/${enc(o.id)}/slip`, { method: "POST" }));
  if (!out) return;
  notify(out.printed ? t("printed") : t("not_printed", { error: out.error }), out.printed ? "info" : "error");
  const dlg = modal(t("slip"), h("div", {}, h("pre", { class: "receipt", id: "slip-text" }, out.slip.text),
    h("p", {}, h("button", { type: "button", onclick: () => dlg.close() }, t("close")))));
}

function cancelOrder(o) {
  const reason = h("input", { id: "cancel-reason", maxlength: "120", "aria-label": t("reason"), placeholder: t("reason") });
  const who = h("input", { id: "approver-id", maxlength: "32", "aria-label": t("approver"), placeholder: t("approver") });
  const pin = h("input", { id: "approver-pin", type: "password", inputmode: "numeric", maxlength: "8", "aria-label": t("approver_pin"), placeholder: t("approver_pin") });
  const note = h("div", { class: "notice hidden", role: "alert" });
  const form = h("form", { class: "grid" }, reason, who, pin, note, h("button", { type: "submit", class: "danger" }, t("cancel_btn")));
  const dlg = modal(`${t("cancel_btn")} ${o.id}`, form);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const send = (approval) => api(`/orders/${enc(o.id)}/cancel`, { method: "POST", body: { reason: reason.value.trim(), approval } });
    try {
      let out;
      try { out = await send(null); } catch (e) {
        if (!(e instanceof ApiError) || e.code !== "approval_required") throw e;
        if (!who.value.trim() || !pin.value) { announce(note, t("approval"), "error"); return; }
        const a = await api("/approvals", { method: "POST", body: { action: "void_sale", staff_id: who.value.trim(), pin: pin.value } });
        out = await send(a.approval);
      }
      dlg.close();
      current = out;
      renderDetail(out);
    } catch (e) { announce(note, e.message, "error"); }
  });
}

// -- start ---------------------------------------------------------------------------------------
(async () => {
  try {
    const ui = await loadUi();
    exponent = ui.exponent;
    state.lang = ui.default_language || "en";
    applyI18n();
  } catch (e) { announce($("#login-notice"), e.message, "error"); }
  handOver($("#back-link"));
  const session = await takeHandOver();
  if (session && session.kind === "staff") await enter(session);
  else if (!state.token) show("login");  // a quick login may have finished meanwhile
})();
