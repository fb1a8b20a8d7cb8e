// The customer display (second HDMI screen): follows the cart, shows offers while idle,
// the payment prompt, and a thank-you with the receipt's QR code.
import { $, h, live, loadUi, pairDevice, setLang, state, t } from "/static/common.js";
import "/static/i18n.js";

let promos = [];
let promoIndex = 0;
let thanksTimer = null;

function mode(name) {
  for (const id of ["idle", "paying", "thanks", "unpaired"]) $(`#${id}`).classList.toggle("hidden", id !== name);
  document.body.dataset.mode = name;
}

function render(cart) {
  $("#lines").replaceChildren(...cart.lines.filter((l) => !l.voided).map((l) => h("tr", {},
    h("td", {}, l.name, ...l.promotions.map((p) => h("div", { class: "promo" }, p))),
    h("td", { class: "num" }, l.qty_text), h("td", { class: "num" }, l.total.text))));
  $("#total").textContent = cart.total.text;
  if (cart.lines.length && !$("#thanks").classList.contains("hidden")) { clearTimeout(thanksTimer); mode("idle"); }
  if (cart.busy === "card") showPaying(cart.due.text);
  else if (!$("#paying").classList.contains("hidden") && cart.state !== "open") mode("idle");
}

function showPaying(amount) {
  $("#pay-amount").textContent = amount;
  mode("paying");
}

function rotatePromo() {
  if (!promos.length) return;
  $("#promo").textContent = promos[promoIndex % promos.length];
  promoIndex += 1;
}

const handlers = {
  hello(msg) { promos = msg.promotions || []; rotatePromo(); render(msg.cart); },
  cart(msg) { render(msg.cart); if (msg.event === "paid") showPaying(msg.cart.due.text); },
  payment(msg) {
    if (msg.state === "waiting") showPaying(msg.amount.text);
    if (msg.state === "declined") mode("idle");
  },
  "sale.completed"(msg) {
    render(msg.cart);
    $("#qr").src = msg.receipt.qr;
    $("#qr").alt = msg.receipt.reference;
    $("#thanks-change").textContent = msg.receipt.change.minor ? `${t("change")}: ${msg.receipt.change.text}` : "";
    mode("thanks");
    clearTimeout(thanksTimer);
    thanksTimer = setTimeout(() => mode("idle"), 20000);
  },
  "session.expired"() { mode("unpaired"); },
};

(async () => {
  const ui = await loadUi();
  setLang(ui.default_language);
  $("#store").textContent = ui.store;
  try { await pairDevice("display"); } catch (e) { mode("unpaired"); return; }
  mode("idle");
  setInterval(rotatePromo, 5000);
  live(handlers, { onState: (up) => { $("#conn").textContent = up ? "" : t("offline"); } });
})();
