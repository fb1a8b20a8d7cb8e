// The cashier screen: keyboard shortcuts and touch, live cart over the WebSocket.
import { $, ApiError, announce, api, h, handOver, live, loadUi, modal, state, takeHandOver, toMinor } from "/static/common.js";

let cart = null;
let selected = null;
let conn = null;
let lastReceipt = null;
let exponent = 2;

const KEYS = [
  ["Enter", "add the typed code (3*code: three of it)"], ["F2", "quantity of the selected line"],
  ["F3", "search items"], ["F4", "cash"], ["F6", "card"], ["F7", "discount"], ["Ctrl+F7", "price override"],
  ["F8", "coupon"], ["F9 / Delete", "void the selected line"], ["F10", "park the sale"],
  ["Ctrl+F10", "resume a parked sale"], ["F11", "returns and exchanges"], ["F12", "shift, cash, X/Z reports"],
  ["Ctrl+U", "customer"], ["Ctrl+P", "reprint"], ["Ctrl+X", "cancel the sale"], ["↑ ↓", "select a line"],
  ["Esc", "close a dialog"], ["Ctrl+L", "log out"],
];

function notify(text, level = "error") { announce($("#notice"), text, level); }

function show(section) {
  for (const id of ["login", "no-shift", "till"]) $(`#${id}`).classList.toggle("hidden", id !== section);
  $("#logout").classList.toggle("hidden", section === "login");
  if (section === "till") $("#code").focus();
  if (section === "login") $("#staff-id").focus();
  if (section === "no-shift") $("#float").focus();
}

// -- login -------------------------------------------------------------------------------------------
async function loggedIn(session) {
  state.token = session.token;
  $("#who").textContent = `${session.staff.name} (${session.staff.role})`;
  if (conn) conn.close();
  conn = live(handlers, { onState: (up) => { const c = $("#conn"); c.textContent = up ? "live" : "offline"; c.className = `badge-health ${up ? "ok" : "unavailable"}`; } });
  const shift = await api("/shift");
  renderShift(shift);
  render(await api("/cart"));
}

function loggedOut(message) {
  state.token = null;
  if (conn) { conn.close(); conn = null; }
  $("#who").textContent = "";
  $("#pin").value = "";
  for (const d of document.querySelectorAll("dialog")) d.close();
  if (message) announce($("#login-notice"), message, "error");
  show("login");
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const s = await api("/session/pin", { method: "POST", body: { staff_id: $("#staff-id").value.trim(), pin: $("#pin").value }, token: null });
    announce($("#login-notice"), "");
    await loggedIn(s);
  } catch (e) { $("#pin").value = ""; announce($("#login-notice"), e.message, "error"); }
});
for (const b of document.querySelectorAll(".keypad button[data-key]")) {
  b.addEventListener("click", () => {
    const pin = $("#pin");
    pin.value = b.dataset.key === "C" ? "" : (pin.value + b.dataset.key).slice(0, 8);
  });
}
$("#badge-login").addEventListener("click", async () => {
  announce($("#login-notice"), "Tap your badge on the reader…", "info");
  try { await loggedIn(await api("/session/badge", { method: "POST", body: { timeout: 30 }, token: null })); announce($("#login-notice"), ""); }
  catch (e) { announce($("#login-notice"), e.message, "error"); }
});
$("#logout").addEventListener("click", logout);
async function logout() { try { await api("/session", { method: "DELETE" }); } catch (e) { /* already gone */ } loggedOut(); }

// -- shift -------------------------------------------------------------------------------------------
function renderShift(shift) {
  $("#shift-state").textContent = shift ? `Shift ${shift.id} · float ${shift.float.text}` : "no shift";
  show(shift ? "till" : "no-shift");
}
$("#shift-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const minor = toMinor($("#float").value, exponent);
  if (minor === null) return announce($("#shift-notice"), "Enter the float, e.g. 100.00", "error");
  try { renderShift(await api("/shift/open", { method: "POST", body: { float: minor } })); }
  catch (e) { announce($("#shift-notice"), e.message, "error"); }
});

// -- live updates ------------------------------------------------------------------------------------
const handlers = {
  hello(msg) { render(msg.cart); },
  cart(msg) { render(msg.cart, msg.line); },
  "sale.completed"(msg) { lastReceipt = msg.receipt; render(msg.cart); },
  notice(msg) { notify(msg.message, msg.level === "info" ? "info" : "error"); },
  shift(msg) { renderShift(msg.shift); },
  payment(msg) {
    const p = $("#card-progress");
    if (p) p.textContent = { waiting: `Waiting for the terminal: ${msg.amount ? msg.amount.text : ""}`, approved: "Approved", declined: `Declined: ${msg.message || ""}` }[msg.state] || msg.state;
  },
  "session.expired"() { loggedOut("Your session expired; log in again."); },
};

function render(view, flashLine) {
  cart = view;
  const body = $("#lines tbody");
  body.replaceChildren();
  for (const ln of view.lines) {
    const tr = h("tr", { "data-line": ln.no, class: [ln.voided ? "voided" : "", ln.no === selected ? "selected" : "", ln.no === flashLine ? "flash" : ""].join(" "), tabindex: "-1", onclick: () => select(ln.no) },
      h("td", {}, ln.no),
      h("td", {}, ln.name, ln.age_restricted ? h("span", { class: "promo" }, " 18+") : null,
        ...ln.promotions.map((p) => h("div", { class: "promo" }, p)),
        ln.discount.minor ? h("div", { class: "promo" }, `− ${ln.discount.text}`) : null),
      h("td", { class: "num" }, ln.qty_text),
      h("td", { class: "num" }, ln.unit_price.text),
      h("td", { class: "num" }, ln.total.text));
    body.append(tr);
  }
  if (flashLine) select(flashLine, false);
  $("#t-subtotal").textContent = view.subtotal.text;
  $("#t-discount").textContent = view.discount.minor ? `− ${view.discount.text}` : view.discount.text;
  $("#t-tax").textContent = view.tax.text;
  $("#t-paid").textContent = view.paid.text;
  $("#t-due").textContent = view.due.text;
  $("#promos").textContent = view.promotions.map((p) => `${p.name} −${p.amount.text}`).join(" · ");
  $("#customer").textContent = view.customer ? `Customer: ${view.customer.name}` : "";
  const needs = $("#needs");
  needs.textContent = view.needs_approval.length ? `Needs approval: ${view.needs_approval.join(", ")} (F4/F6 asks for it)` : "";
  needs.classList.toggle("hidden", !view.needs_approval.length);
}

function select(no, focus = true) {
  selected = no;
  for (const tr of document.querySelectorAll("#lines tbody tr")) tr.classList.toggle("selected", Number(tr.dataset.line) === no);
  const row = document.querySelector(`#lines tr[data-line="${no}"]`);
  if (row) row.scrollIntoView({ block: "nearest" });
  if (focus && row) row.focus();
}

// -- actions -----------------------------------------------------------------------------------------
// Call fn(approval); when a supervisor's approval is needed, ask for it and call again.
async function withApproval(fn) {
  try { return await fn(null); }
  catch (e) {
    if (!(e instanceof ApiError) || e.code !== "approval_required") throw e;
    const token = await askApproval(e.action, e.message);
    if (!token) throw new ApiError(403, { error: { code: "cancelled", message: "approval cancelled" } });
    return await fn(token);
  }
}

function askApproval(action, why) {
  return new Promise((resolve) => {
    let done = false;
    const id = h("input", { id: "approver-id", maxlength: "32", "aria-label": "Supervisor ID", placeholder: "Supervisor ID" });
    const pin = h("input", { id: "approver-pin", type: "password", inputmode: "numeric", maxlength: "8", "aria-label": "Supervisor PIN", placeholder: "PIN" });
    const msg = h("div", { class: "notice hidden", role: "alert" });
    const finish = (token) => { done = true; resolve(token); dlg.close(); };
    const form = h("form", { onsubmit: async (ev) => {
      ev.preventDefault();
      try { finish((await api("/approvals", { method: "POST", body: { action, staff_id: id.value.trim(), pin: pin.value } })).approval); }
      catch (err) { pin.value = ""; announce(msg, err.message, "error"); }
    } }, h("p", {}, why), id, h("p"), pin, msg,
      h("div", { class: "row" }, h("button", { type: "submit", class: "primary" }, "Approve"),
        h("button", { type: "button", onclick: async () => {
          announce(msg, "Tap the supervisor badge…", "info");
          try { finish((await api("/approvals", { method: "POST", body: { action, badge: true, timeout: 30 } })).approval); }
          catch (err) { announce(msg, err.message, "error"); }
        } }, "Badge"),
        h("button", { type: "button", onclick: () => dlg.close() }, "Cancel")));
    const dlg = modal("Supervisor approval", form, { onClose: () => { if (!done) resolve(null); $("#code").focus(); } });
    id.focus();
  });
}

async function run(fn) {
  try { const r = await fn(); announce($("#notice"), ""); return r; }
  catch (e) { if (e.code === "unauthenticated") loggedOut(e.message); else if (e.code !== "cancelled") notify(e.message); return null; }
}

async function addCode(text) {
  const raw = text.trim();
  if (!raw) return;
  const m = /^(\d+(?:[.,]\d{1,3})?)\*(.+)$/.exec(raw);
  const body = m ? { code: m[2], quantity: m[1].replace(",", ".") } : { code: raw };
  try {
    render(await api("/cart/items", { method: "POST", body }));
    announce($("#notice"), "");
  } catch (e) {
    if (e.code === "not_found" && !/^\d+$/.test(raw)) return searchDialog(raw);
    if (e.code === "unauthenticated") return loggedOut(e.message);
    notify(e.message);
  }
}

$("#scan-form").addEventListener("submit", (ev) => { ev.preventDefault(); const c = $("#code"); addCode(c.value); c.value = ""; });

function searchDialog(initial = "") {
  const input = h("input", { value: initial, "aria-label": "Search text", placeholder: "Name or SKU" });
  const list = h("div", { class: "grid" });
  const go = async () => {
    const items = await run(() => api(`/catalog/search?q=${encodeURIComponent(input.value.trim())}`));
    list.replaceChildren(...(items || []).map((it) => h("button", { type: "button", onclick: async () => {
      dlg.close();
      await run(async () => render(await api("/cart/items", { method: "POST", body: { sku: it.sku } })));
    } }, `${it.name} · ${it.price.text}${it.unit === "kg" ? "/kg" : ""}`)));
  };
  const dlg = modal("Search", h("form", { onsubmit: (ev) => { ev.preventDefault(); go(); } }, input, h("p"), list), { onClose: () => $("#code").focus() });
  input.focus();
  if (initial) go();
}

function prompt(title, fields, submit) {
  const inputs = fields.map((f) => h("input", { "aria-label": f.label, placeholder: f.label, value: f.value || "", inputmode: f.mode || "text", maxlength: "120" }));
  const dlg = modal(title, h("form", { onsubmit: async (ev) => {
    ev.preventDefault();
    const ok = await submit(inputs.map((i) => i.value.trim()));
    if (ok !== false) dlg.close();
  } }, ...inputs.flatMap((i, n) => [h("label", {}, fields[n].label), i]), h("p"),
    h("div", { class: "row" }, h("button", { type: "submit", class: "primary" }, "OK"), h("button", { type: "button", onclick: () => dlg.close() }, "Cancel"))),
  { onClose: () => $("#code").focus() });
  if (inputs[0]) inputs[0].focus();
  return dlg;
}

function needLine() {
  if (!selected && cart && cart.lines.length) select(cart.lines[cart.lines.length - 1].no, false);
  if (!selected) { notify("Select a line first"); return null; }
  return selected;
}

function quantity() {
  const no = needLine(); if (!no) return;
  prompt(`Quantity of line ${no}`, [{ label: "Quantity (kg for weighed items)", mode: "decimal" }], async ([q]) =>
    run(async () => render(await api(`/cart/lines/${no}`, { method: "PATCH", body: { quantity: q.replace(",", ".") } }))));
}

function voidLine() {
  const no = needLine(); if (!no) return;
  run(() => withApproval(async (approval) => render(await api(`/cart/lines/${no}/void`, { method: "POST", body: { reason: "cashier void", approval } }))));
}

function discount(line) {
  const no = line ? needLine() : null;
  if (line && !no) return;
  prompt(no ? `Discount on line ${no}` : "Discount on the whole sale", [
    { label: "Percent (or leave empty)", mode: "decimal" }, { label: "Amount (or leave empty)", mode: "decimal" }, { label: "Reason" }],
  async ([pct, amt, reason]) => {
    const body = { reason };
    if (pct) body.percent = pct.replace(",", "."); else body.amount = toMinor(amt, exponent);
    const path = no ? `/cart/lines/${no}/discount` : "/cart/discount";
    return run(() => withApproval(async (approval) => render(await api(path, { method: "POST", body: { ...body, approval } }))));
  });
}

function discountChoice() {
  const dlg = modal("Discount", h("div", { class: "row" },
    h("button", { type: "button", class: "big", onclick: () => { dlg.close(); discount(true); } }, "Selected line"),
    h("button", { type: "button", class: "big", onclick: () => { dlg.close(); discount(false); } }, "Whole sale")));
}

function priceOverride() {
  const no = needLine(); if (!no) return;
  prompt(`New price for line ${no}`, [{ label: "Unit price", mode: "decimal" }, { label: "Reason" }], async ([p, reason]) =>
    run(() => withApproval(async (approval) => render(await api(`/cart/lines/${no}/price`, { method: "POST", body: { price: toMinor(p, exponent), reason, approval } })))));
}

function coupon() {
  prompt("Coupon", [{ label: "Coupon code" }], async ([code]) => run(async () => {
    const view = await api("/cart/coupons", { method: "POST", body: { code } });
    render(view);
    if (!view.coupon_applied) notify(`Coupon ${code} noted; it does not apply to these items (yet)`, "info");
  }));
}

function receiptDialog(receipt) {
  lastReceipt = receipt;
  const dlg = modal(`Receipt ${receipt.reference}`, h("div", {},
    receipt.change.minor ? h("h1", { id: "change" }, `Change: ${receipt.change.text}`) : null,
    h("div", { class: "row" }, h("pre", { class: "receipt" }, receipt.text), h("img", { class: "qr", src: receipt.qr, alt: `QR code ${receipt.reference}` })),
    h("button", { type: "button", class: "primary big", onclick: () => dlg.close() }, "Next customer")), { onClose: () => $("#code").focus() });
  dlg.querySelector("button.primary").focus();
}

async function pay(kind, amount) {
  const res = await withApproval(async (approval) => {
    if (approval) await api("/cart/approve", { method: "POST", body: { approval } });
    return api("/cart/payments", { method: "POST", body: amount === undefined ? { kind } : { kind, amount } });
  });
  render(res.cart);
  if (res.receipt) receiptDialog(res.receipt);
  return res;
}

function cashDialog() {
  if (!cart || !cart.lines.length) return notify("The cart is empty");
  const input = h("input", { id: "tendered", inputmode: "decimal", "aria-label": "Cash handed over", placeholder: cart.cash_due.text });
  const msg = h("div", { class: "notice hidden", role: "alert" });
  const submit = async (minor) => {
    try { dlg.close(); await pay("cash", minor); } catch (e) { notify(e.message); }
  };
  const dlg = modal(`Cash · due ${cart.cash_due.text}`, h("form", { onsubmit: (ev) => {
    ev.preventDefault();
    const v = input.value.trim();
    const minor = v ? toMinor(v, exponent) : undefined;
    if (minor === null) return announce(msg, "Enter an amount like 20.00", "error");
    submit(minor);
  } }, h("div", { class: "grid two" }, ...cart.quick_cash.map((a) => h("button", { type: "button", class: "big", "data-amount": a.minor, onclick: () => submit(a.minor) }, a.text))),
    h("label", { for: "tendered" }, "Amount handed over"), input, msg, h("p"),
    h("button", { type: "submit", class: "primary big" }, "Take cash")), { onClose: () => $("#code").focus() });
  input.focus();
}

function cardDialog() {
  if (!cart || !cart.lines.length) return notify("The cart is empty");
  const progress = h("p", { id: "card-progress", role: "status" }, "Starting the terminal…");
  const dlg = modal(`Card · ${cart.due.text}`, h("div", {}, progress, h("button", { type: "button", onclick: () => dlg.close() }, "Close")));
  pay("card").then(() => dlg.close()).catch((e) => { progress.textContent = e.message; progress.className = "bad"; });
}

async function park() { await run(async () => render(await api("/cart/suspend", { method: "POST" }))); }

async function resume() {
  const parked = await run(() => api("/suspended"));
  if (!parked) return;
  const dlg = modal("Parked sales", h("div", { class: "grid" }, parked.length ? parked.map((p) => h("button", { type: "button", onclick: async () => {
    dlg.close(); await run(async () => render(await api(`/suspended/${encodeURIComponent(p.id)}/resume`, { method: "POST" })));
  } }, `${p.time} · ${p.cashier || ""}`)) : h("p", {}, "No parked sales")));
}

function cancelSale() {
  prompt("Cancel the whole sale", [{ label: "Reason" }], async ([reason]) =>
    run(() => withApproval(async (approval) => render(await api("/cart/cancel", { method: "POST", body: { reason, approval } })))));
}

function reprint() {
  prompt("Reprint a receipt", [{ label: "Receipt reference", value: lastReceipt ? lastReceipt.reference : "" }], async ([ref]) =>
    run(async () => receiptDialog(await api("/receipts/reprint", { method: "POST", body: { reference: ref } }))));
}

function customerDialog() {
  const q = h("input", { "aria-label": "Find customer", placeholder: "Name, email or phone" });
  const list = h("div", { class: "grid" });
  const attach = async (id) => { dlg.close(); await run(async () => render(await api("/cart/customer", { method: "POST", body: { customer_id: id } }))); };
  const name = h("input", { placeholder: "Name", "aria-label": "New customer name" });
  const email = h("input", { placeholder: "Email", "aria-label": "Email", type: "email" });
  const consent = h("input", { type: "checkbox", id: "consent" });
  const dlg = modal("Customer", h("div", {},
    h("form", { onsubmit: async (ev) => { ev.preventDefault(); const found = await run(() => api(`/customers?q=${encodeURIComponent(q.value.trim())}`)); list.replaceChildren(...(found || []).map((c) => h("button", { type: "button", onclick: () => attach(c.id) }, `${c.name} ${c.email || ""}`))); } }, q),
    list, h("h3", {}, "New customer"),
    h("form", { onsubmit: async (ev) => { ev.preventDefault(); const c = await run(() => api("/customers", { method: "POST", body: { name: name.value.trim(), email: email.value.trim() || null, consent: consent.checked } })); if (c) attach(c.id); } },
      name, h("p"), email, h("label", { for: "consent" }, consent, " Agrees to marketing"), h("button", { type: "submit" }, "Add and attach")),
    cart && cart.customer ? h("button", { type: "button", onclick: () => attach(null) }, "Detach customer") : null));
  q.focus();
}

// A receipted return; `reference` (a receipt reference or order id) fills the field and looks the sale up.
function returnsDialog(reference = "") {
  const ref = h("input", { "aria-label": "Receipt reference", placeholder: "Receipt reference (scan the receipt)", value: reference });
  const box = h("div");
  const dlg = modal("Returns and exchanges", h("div", {},
    h("form", { onsubmit: async (ev) => {
      ev.preventDefault();
      const sale = await run(() => api(`/sales/${encodeURIComponent(ref.value.trim())}`));
      if (!sale) return;
      const online = sale.device === "online";
      const cardPresent = h("input", { type: "checkbox", id: "card-present" });
      const checks = sale.lines.filter((l) => !l.voided).map((l) => ({ l, c: h("input", { type: "checkbox", "aria-label": `Return ${l.name}` }) }));
      const chosen = () => checks.filter((x) => x.c.checked).map((x) => ({ line: x.l.line, qty: x.l.qty }));
      const act = async (path) => {
        const body = { reference: ref.value.trim(), lines: chosen(), reason: "customer return" };
        if (online && path === "/returns") body.card_present = cardPresent.checked;
        const res = await run(() => withApproval((approval) => api(path, { method: "POST", body: { ...body, approval } })));
        if (res) { dlg.close(); if (res.cart) render(res.cart); receiptDialog(res.receipt); }
      };
      box.replaceChildren(h("p", {}, `Sale ${sale.number} · ${sale.completed_at} · ${sale.total.text}`),
        ...checks.map(({ l, c }) => h("label", {}, c, ` ${l.line}. ${l.name} ${l.qty} · ${l.total.text}${Number(l.refunded_qty) ? ` (refunded ${l.refunded_qty})` : ""}`)),
        online ? h("label", { for: "card-present" }, cardPresent, " Online order: the customer's card is here (refund to card; otherwise store credit)") : null,
        h("div", { class: "row" }, h("button", { type: "button", class: "primary", onclick: () => act("/returns") }, "Refund"),
          h("button", { type: "button", onclick: () => act("/exchanges") }, "Exchange against this sale")));
    } }, ref), box));
  ref.focus();
  if (reference) ref.form.requestSubmit();
}
// The customer panel's purchase history starts a return of one of them (customers.js).
document.addEventListener("tillbox:return", (ev) => { if (state.token) returnsDialog(ev.detail.reference); });

function shiftDialog() {
  const out = h("pre", { class: "receipt hidden" });
  const show = (r) => { out.textContent = r.text; out.classList.remove("hidden"); };
  const dlg = modal("Shift", h("div", {},
    h("div", { class: "grid two" },
      h("button", { type: "button", onclick: async () => { const r = await run(() => api("/reports/x")); if (r) show(r); } }, "X report"),
      h("button", { type: "button", onclick: () => { dlg.close(); cashMove(); } }, "Cash in / out"),
      h("button", { type: "button", onclick: () => { dlg.close(); prompt("Open the drawer (no sale)", [{ label: "Reason" }], async ([reason]) => run(() => withApproval((approval) => api("/shift/no-sale", { method: "POST", body: { reason, approval } })))); } }, "No sale"),
      h("button", { type: "button", class: "danger", onclick: () => { dlg.close(); closeShift(); } }, "Close shift (Z)")), out));
}

function cashMove() {
  const kind = h("select", { "aria-label": "Kind" }, h("option", { value: "paid_in" }, "Paid in"), h("option", { value: "paid_out" }, "Paid out"), h("option", { value: "safe_drop" }, "Safe drop"));
  const amount = h("input", { inputmode: "decimal", "aria-label": "Amount", placeholder: "Amount" });
  const reason = h("input", { "aria-label": "Reason", placeholder: "Reason" });
  const dlg = modal("Cash in / out", h("form", { onsubmit: async (ev) => {
    ev.preventDefault();
    const ok = await run(() => withApproval((approval) => api("/shift/cash", { method: "POST", body: { kind: kind.value, amount: toMinor(amount.value, exponent), reason: reason.value.trim(), approval } })));
    if (ok) dlg.close();
  } }, kind, h("p"), amount, h("p"), reason, h("p"), h("button", { type: "submit", class: "primary" }, "Record")));
}

function closeShift() {
  prompt("Close the shift (Z report)", [{ label: "Counted cash in the drawer", mode: "decimal" }], async ([counted]) => {
    const minor = toMinor(counted, exponent);
    const r = await run(() => withApproval((approval) => api("/shift/close", { method: "POST", body: { counted_total: minor, approval } })));
    if (r) modal(`Z report ${r.report.z_number}`, h("pre", { class: "receipt" }, r.text), { onClose: () => renderShift(null) });
    return r !== null;
  });
}

function helpDialog() {
  modal("Keyboard shortcuts", h("table", {}, h("tbody", {}, ...KEYS.map(([k, what]) => h("tr", {}, h("td", {}, h("kbd", {}, k)), h("td", {}, what))))));
}

const ACTIONS = {
  "b-qty": quantity, "b-search": () => searchDialog(), "b-cash": cashDialog, "b-card": cardDialog, "b-discount": discountChoice,
  "b-coupon": coupon, "b-void": voidLine, "b-price": priceOverride, "b-park": park, "b-resume": resume, "b-returns": () => returnsDialog(),
  "b-shift": shiftDialog, "b-customer": customerDialog, "b-reprint": reprint, "b-cancel": cancelSale, "b-help": helpDialog,
};
for (const [id, fn] of Object.entries(ACTIONS)) $(`#${id}`).addEventListener("click", fn);

document.addEventListener("keydown", (ev) => {
  if (!state.token || $("#till").classList.contains("hidden")) return;
  if (document.querySelector("dialog[open]")) return;
  const key = (ev.ctrlKey ? "Ctrl+" : "") + ev.key;
  const map = {
    F1: helpDialog, F2: quantity, F3: () => searchDialog(), F4: cashDialog, F6: cardDialog, F7: discountChoice, "Ctrl+F7": priceOverride,
    F8: coupon, F9: voidLine, F10: park, "Ctrl+F10": resume, F11: returnsDialog, F12: shiftDialog, "Ctrl+u": customerDialog,
    "Ctrl+p": reprint, "Ctrl+x": cancelSale, "Ctrl+l": logout,
  };
  if (map[key]) { ev.preventDefault(); map[key](); return; }
  if (ev.key === "Delete" && document.activeElement !== $("#code")) { ev.preventDefault(); voidLine(); return; }
  if ((ev.key === "ArrowUp" || ev.key === "ArrowDown") && cart && cart.lines.length) {
    ev.preventDefault();
    const nos = cart.lines.map((l) => l.no);
    const i = Math.max(0, nos.indexOf(selected));
    select(nos[Math.min(nos.length - 1, Math.max(0, i + (ev.key === "ArrowUp" ? -1 : 1)))]);
  }
});

// -- start -------------------------------------------------------------------------------------------
(async () => {
  const ui = await loadUi();
  exponent = ui.exponent;
  $("#store").textContent = `${ui.store} · ${ui.device}`;
  handOver($("#orders-link"));
  const session = await takeHandOver();
  if (session && session.kind === "staff") await loggedIn(session);
  else if (!state.token) show("login");  // a quick login may have finished meanwhile
})();
