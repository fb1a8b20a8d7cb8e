// Gift cards, store credit and loyalty points on the cashier screen (docs/accounts.md).
// The cart itself re-renders from the live "cart" and "sale.completed" messages (cashier.js);
// this module only asks and shows what happened.
import { $, announce, api, h, modal, state, toMinor } from "/static/common.js";

const exponent = () => (state.ui ? state.ui.exponent : 2);
const notice = (text, level = "error") => announce($("#notice"), text, level);
const focusCode = () => { const c = $("#code"); if (c) c.focus(); };

// A small form dialog: fields [{label, mode}], submit(values) -> true to close.
function ask(title, fields, submit, extra = null) {
  const inputs = fields.map((f) => h("input", { "aria-label": f.label, placeholder: f.label, inputmode: f.mode || "text", maxlength: "40", autocomplete: "off" }));
  const msg = h("div", { class: "notice hidden", role: "alert" });
  const dlg = modal(title, h("form", { onsubmit: async (ev) => {
    ev.preventDefault();
    try { if (await submit(inputs.map((i) => i.value.trim()), msg)) dlg.close(); }
    catch (e) { announce(msg, e.message, "error"); }
  } }, ...inputs.flatMap((input, n) => [h("label", {}, fields[n].label), input]), extra, msg, h("p"),
    h("div", { class: "row" }, h("button", { type: "submit", class: "primary" }, "OK"),
      h("button", { type: "button", onclick: () => dlg.close() }, "Cancel"))), { onClose: focusCode });
  if (inputs[0]) inputs[0].focus();
  return dlg;
}

function showReceipt(receipt) {
  const dlg = modal(`Receipt ${receipt.reference}`, h("div", {},
    receipt.change && receipt.change.minor ? h("h1", {}, `Change: ${receipt.change.text}`) : null,
    h("pre", { class: "receipt" }, receipt.text),
    h("button", { type: "button", class: "primary big", onclick: () => dlg.close() }, "Next customer")), { onClose: focusCode });
  dlg.querySelector("button.primary").focus();
}

function paid(res) {
  const t = res.tender;
  const offline = t.mode === "offline" ? " (taken offline: the shop will confirm it)" : "";
  const what = t.kind === "loyalty" ? `${t.points} points` : t.reference;
  notice(`${what}: ${t.amount.text}${offline}`, t.mode === "offline" ? "error" : "info");
  if (res.receipt) showReceipt(res.receipt);
}

function payStoredValue() {
  ask("Pay with gift card or store credit", [{ label: "Card or credit number (scan it)" }, { label: "Amount (empty: all that is due)", mode: "decimal" }],
    async ([account, amount], msg) => {
      const body = { account };
      if (amount) {
        const minor = toMinor(amount, exponent());
        if (minor === null) { announce(msg, "Enter an amount like 20.00", "error"); return false; }
        body.amount = minor;
      }
      announce(msg, "Asking the shop…", "info");
      paid(await api("/cart/payments/stored-value", { method: "POST", body }));
      return true;
    });
}

function payPoints() {
  ask("Pay with loyalty points", [{ label: "Points (empty: as many as needed)", mode: "numeric" }], async ([points], msg) => {
    const body = {};
    if (points) {
      if (!/^\d{1,9}$/.test(points)) { announce(msg, "Enter a whole number of points", "error"); return false; }
      body.points = Number(points);
    }
    announce(msg, "Asking the shop…", "info");
    paid(await api("/cart/payments/points", { method: "POST", body }));
    return true;
  });
}

// Points off the price (a discount: the tax base goes down), or taking them off again.
async function pointsOff() {
  let cart;
  try { cart = await api("/cart"); } catch (e) { notice(e.message); return; }
  if (!cart.id || !cart.lines.length) { notice("The cart is empty"); return; }
  const path = `/sales/${encodeURIComponent(cart.id)}/loyalty-discount`;
  const d = cart.points_discount;
  if (d) {
    const dlg = modal("Points off the price", h("div", {},
      h("p", {}, `${d.points} points take ${d.amount.text} off this sale.`),
      h("div", { class: "row" },
        h("button", { type: "button", class: "danger", onclick: async () => {
          dlg.close();
          try {
            const res = await api(path, { method: "DELETE" });
            notice(`Points discount removed: ${res.released} points go back to the customer`, "info");
          } catch (e) { notice(e.message); }
        } }, "Remove the points discount"),
        h("button", { type: "button", onclick: () => dlg.close() }, "Keep it"))), { onClose: focusCode });
    dlg.querySelector("button.danger").focus();
    return;
  }
  ask("Points off the price", [{ label: "Points (empty: as many as the sale takes)", mode: "numeric" }], async ([points], msg) => {
    const body = { points: null };
    if (points) {
      if (!/^\d{1,9}$/.test(points)) { announce(msg, "Enter a whole number of points", "error"); return false; }
      body.points = Number(points);
    }
    announce(msg, "Asking the shop…", "info");
    const res = await api(path, { method: "POST", body });
    const p = res.points_discount;
    const offline = p.mode === "offline" ? " (taken offline: the shop will confirm it)" : "";
    notice(`${p.points} points: ${p.amount.text} off${offline}`, p.mode === "offline" ? "error" : "info");
    return true;
  });
}

function balance() {
  const out = h("p", { role: "status", id: "balance-result" });
  ask("Balance check", [{ label: "Card or credit number (scan it)" }], async ([account]) => {
    const b = await api(`/accounts/stored-value/${encodeURIComponent(account)}`);
    out.textContent = `${b.account} (${b.kind.replace("_", " ")}): ${b.balance.text}` +
      (b.source === "shop" ? "" : ` — last known${b.known_at ? ` on ${b.known_at}` : ""}, the shop cannot be reached`);
    return false;
  }, out);
}

function sellGiftCard() {
  ask("Sell or top up a gift card", [{ label: "Amount", mode: "decimal" }, { label: "Card number to top up (empty: a new card)" }],
    async ([amount, account], msg) => {
      const minor = toMinor(amount, exponent());
      if (!minor) { announce(msg, "Enter an amount like 25.00", "error"); return false; }
      const body = account ? { amount: minor, account } : { amount: minor };
      const res = await api("/cart/gift-cards", { method: "POST", body });
      notice(`Gift card ${res.account}: credited when the sale is paid`, "info");
      return true;
    });
}

const BUTTONS = { "b-giftcard": payStoredValue, "b-points": payPoints, "b-points-off": pointsOff, "b-balance": balance, "b-sell-card": sellGiftCard };
for (const [id, fn] of Object.entries(BUTTONS)) {
  const b = document.getElementById(id);
  if (b) b.addEventListener("click", () => {
    if (!state.token) return;
    fn();
  });
}

document.addEventListener("keydown", (ev) => {
  if (!state.token || $("#till").classList.contains("hidden") || document.querySelector("dialog[open]")) return;
  const map = { "Ctrl+g": payStoredValue, "Ctrl+o": payPoints, "Ctrl+i": pointsOff, "Ctrl+b": balance, "Ctrl+k": sellGiftCard };
  const fn = map[(ev.ctrlKey ? "Ctrl+" : "") + ev.key];
  if (fn) { ev.preventDefault(); fn(); }
});
