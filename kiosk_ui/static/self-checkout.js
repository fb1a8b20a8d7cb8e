// The self-checkout lane: attract screen, guided scan-and-pay, produce lookup with the scale,
// attendant interventions (age checks, help), card payment (cash only with a cash device),
// printed or digital receipt. English and German, switchable on screen.
import { $, ApiError, announce, api, h, live, loadUi, pairDevice, setLang, state, t } from "/static/common.js";
import "/static/i18n.js";

let ui = null;
let cart = null;
let screen = "attract";
let produce = [];
let chosen = null;
let receipt = null;
let idleTimer = null;
const PICTURES = { banana: "banana", apple: "apple", tomato: "tomato", cheese: "cheese", gouda: "cheese" };

function picture(name) {
  const key = Object.keys(PICTURES).find((k) => name.toLowerCase().includes(k));
  return `/static/img/${key ? PICTURES[key] : "item"}.svg`;
}

function show(name) {
  screen = name;
  for (const el of document.querySelectorAll(".screen")) el.classList.toggle("hidden", el.id !== name);
  const first = $(`#${name} button`);
  if (first) first.focus();
}

function say(text, level = "error") { announce($("#message"), text, level); }

function explain(e) {
  if (e instanceof ApiError && e.code === "not_found") return t("not_found");
  return t("error", { message: e.message });
}

async function call(fn) {
  try { const r = await fn(); say(""); return r; }
  catch (e) {
    if (e instanceof ApiError && e.code === "approval_required") { attendant(e.action); return null; }
    if (e instanceof ApiError && e.code === "unauthenticated") { show("unpaired"); return null; }
    say(explain(e));
    return null;
  }
}

function render(view) {
  cart = view;
  $("#lines").replaceChildren(...view.lines.filter((l) => !l.voided).map((l) => h("tr", {},
    h("td", {}, l.name, l.age_restricted ? " (18+)" : "", ...l.promotions.map((p) => h("div", { class: "promo" }, p))),
    h("td", { class: "num" }, l.qty_text), h("td", { class: "num" }, l.total.text))));
  $("#empty").classList.toggle("hidden", view.lines.length > 0);
  $("#total").textContent = view.total.text;
  $("#pay").disabled = !view.lines.length;
  if (view.needs_approval.length && screen !== "attendant") attendant(view.needs_approval[0]);
  else if (!view.needs_approval.length && screen === "attendant") show("shop");
  if (view.lines.length && screen === "attract") show("shop");
}

// -- attendant ---------------------------------------------------------------------------------------
let pendingAction = null;
function attendant(action) {
  pendingAction = action;
  $("#att-why").classList.toggle("hidden", action !== "sell_age_restricted");
  $("#att-id").value = ""; $("#att-pin").value = "";
  announce($("#att-msg"), "");
  show("attendant");
}

async function approve(body) {
  try {
    const ok = await api("/approvals", { method: "POST", body: { action: pendingAction, ...body } });
    if (pendingAction === "sell_age_restricted") render(await api("/cart/approve", { method: "POST", body: { approval: ok.approval } }));
    else if (pendingAction === "void_sale") render(await api("/cart/cancel", { method: "POST", body: { reason: "cancelled at the lane", approval: ok.approval } }));
    pendingAction = null;
    show(cart && cart.lines.length ? "shop" : "attract");
  } catch (e) { $("#att-pin").value = ""; announce($("#att-msg"), explain(e), "error"); }
}

$("#att-form").addEventListener("submit", (ev) => { ev.preventDefault(); approve({ staff_id: $("#att-id").value.trim(), pin: $("#att-pin").value }); });
$("#att-badge").addEventListener("click", () => approve({ badge: true, timeout: 30 }));

// -- shopping ----------------------------------------------------------------------------------------
$("#start").addEventListener("click", () => show("shop"));
$("#help").addEventListener("click", async () => { if (await call(() => api("/cart/attendant", { method: "POST" }))) { pendingAction = "help"; say(t("help_called"), "info"); } });
for (const b of document.querySelectorAll("button.back")) b.addEventListener("click", () => show(cart && cart.lines.length ? "shop" : "shop"));

$("#lookup").addEventListener("click", async () => {
  produce = (await call(() => api("/catalog/produce"))) || [];
  const departments = [...new Set(produce.map((p) => p.department))];
  $("#categories").replaceChildren(...departments.map((d) => h("button", { type: "button", class: "big", "data-department": d, onclick: () => tiles(d) }, d)));
  tiles(departments[0]);
  show("produce");
});

function tiles(department) {
  $("#tiles").replaceChildren(...produce.filter((p) => p.department === department).map((p) => h("button", {
    type: "button", "data-sku": p.sku, onclick: () => weighScreen(p),
  }, h("img", { src: picture(p.name), alt: "" }), h("strong", {}, p.name), h("span", {}, `${p.price.text} ${t("by_weight")}`))));
}

function weighScreen(item) {
  chosen = item;
  $("#weigh-img").src = picture(item.name);
  $("#weigh-title").textContent = t("weigh_title", { name: item.name });
  show("weigh");
}

$("#weigh-go").addEventListener("click", async () => {
  say(t("weighing"), "info");
  const view = await call(() => api("/cart/items", { method: "POST", body: { sku: chosen.sku } }));
  if (view) { render(view); if (screen !== "attendant") show("shop"); }
});

// -- paying ------------------------------------------------------------------------------------------
$("#pay").addEventListener("click", () => {
  if (!cart || !cart.lines.length) return;
  if (cart.needs_approval.length) return attendant(cart.needs_approval[0]);
  $("#pay-total").textContent = cart.due.text;
  $("#pay-status").textContent = "";
  $("#pay-cash").classList.toggle("hidden", !ui.lane_cash);
  show("payment");
});

async function pay(kind) {
  $("#pay-status").textContent = t("card_wait");
  for (const b of document.querySelectorAll("#payment button")) b.disabled = true;
  try {
    const res = await api("/cart/payments", { method: "POST", body: { kind, print: false } });
    render(res.cart);
    if (res.receipt) { receipt = res.receipt; show("receipt"); }
  } catch (e) {
    if (e instanceof ApiError && e.code === "approval_required") attendant(e.action);
    else $("#pay-status").textContent = e.code === "declined" ? t("declined", { message: e.message }) : explain(e);
  } finally {
    for (const b of document.querySelectorAll("#payment button")) b.disabled = false;
  }
}
$("#pay-card").addEventListener("click", () => pay("card"));
$("#pay-cash").addEventListener("click", () => pay("cash"));

function thanks(showQr) {
  $("#thanks-qr").classList.toggle("hidden", !showQr);
  if (showQr) { $("#qr").src = receipt.qr; $("#qr").alt = receipt.reference; }
  show("thanks");
  clearTimeout(idleTimer);
  idleTimer = setTimeout(() => show("attract"), 30000);
}
$("#r-print").addEventListener("click", async () => { await call(() => api("/receipts/last/print", { method: "POST" })); thanks(false); });
$("#r-digital").addEventListener("click", () => thanks(true));
$("#r-none").addEventListener("click", () => thanks(false));
$("#again").addEventListener("click", () => { clearTimeout(idleTimer); show("attract"); });

// -- live updates and start ----------------------------------------------------------------------------
const handlers = {
  hello(msg) { render(msg.cart); },
  cart(msg) { render(msg.cart); },
  notice(msg) { if (msg.level === "error") say(msg.code === "not_found" ? t("not_found") : msg.message); },
  payment(msg) { if (msg.state === "waiting") $("#pay-status").textContent = t("card_wait"); },
  attendant(msg) { if (!msg.active && screen === "attendant" && pendingAction === "help") show("shop"); },
  "session.expired"() { show("unpaired"); },
};

function languages() {
  $("#langs").replaceChildren(...ui.languages.map((lang) => h("button", {
    type: "button", lang, "aria-pressed": String(lang === state.lang), "data-lang": lang,
    onclick: () => { setLang(lang); languages(); if (cart) render(cart); },
  }, lang.toUpperCase())));
}

(async () => {
  ui = await loadUi();
  setLang(ui.default_language);
  languages();
  $("#store").textContent = ui.store;
  try { await pairDevice("self_checkout"); } catch (e) { show("unpaired"); return; }
  show("attract");
  live(handlers, { onState: (up) => { $("#conn").textContent = up ? "" : t("offline"); } });
})();
