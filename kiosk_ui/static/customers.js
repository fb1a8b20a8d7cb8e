// Customer panel of the cashier screen: identify a customer at the shop by phone, email,
// loyalty card, badge or the QR code of the shop's app, and attach them to the open sale;
// register a new customer. The shop answers when it can; offline only customers kept on
// this till (with their consent) are found. Once a customer is identified, "Purchases"
// lists what they bought at every till and online (the shop's record, never kept here);
// "Return" opens the cashier screen's receipted return with the purchase's reference
// (the "tillbox:return" event, handled in cashier.js). See docs/customers.md.
import { $, announce, api, h } from "/static/common.js";

function label(c, source) {
  const where = source === "cache" ? "from this till (shop offline)" : source === "till" ? "registered here" : "from the shop";
  return [c.name, c.card ? `card ${c.card}` : null, c.cached ? "kept on this till" : "not kept (no consent)", where]
    .filter(Boolean).join(" · ");
}

function build(root) {
  const msg = h("div", { class: "notice hidden", role: "alert" });
  const result = h("div", { id: "customer-result", "aria-live": "polite" });
  const history = h("div", { id: "customer-history", "aria-live": "polite" });
  const token = h("input", { id: "customer-token", class: "grow", autocomplete: "off", maxlength: "200",
    placeholder: "Phone, email, card or app QR", "aria-label": "Customer phone, email, card number or app QR code" });
  // typing here must not reach the cashier's shortcuts (Delete voids a line)
  const keep = (ev) => { if (ev.key === "Delete") ev.stopPropagation(); };
  token.addEventListener("keydown", keep);

  const attach = async (c) => {
    try { await api("/cart/customer", { method: "POST", body: { customer_id: c.id } }); announce(msg, `${c.name} attached to the sale`, "info"); purchases(c); }
    catch (e) { announce(msg, e.message, "error"); }
  };
  const consent = async (c, source) => {
    try { show(await api(`/customers/${encodeURIComponent(c.id)}/consent`, { method: "POST", body: { consent: !c.consent } }), source); }
    catch (e) { announce(msg, e.message, "error"); }
  };
  // The customer's purchases, newest first; "More" asks for the page before the last one shown.
  function purchase(p) {
    const text = [p.date, p.where, p.reference, p.total ? p.total.text : "–", p.refunded ? `refunded ${p.refunded.text}` : null];
    return h("div", { class: "row purchase", "data-reference": p.reference },
      h("span", { class: "grow" }, text.filter(Boolean).join(" · ")),
      p.returnable ? h("button", { type: "button", onclick: () =>
        document.dispatchEvent(new CustomEvent("tillbox:return", { detail: { reference: p.reference } })) }, "Return") : null);
  }
  async function purchases(c, before = null) {
    const query = before ? `?before=${encodeURIComponent(before)}` : "";
    let res;
    try { res = await api(`/customers/${encodeURIComponent(c.id)}/history${query}`); }
    catch (e) { history.replaceChildren(h("h3", {}, "Purchases"), h("p", { class: "muted" }, e.message)); return; }
    if (res.available === false) { history.replaceChildren(h("h3", {}, "Purchases"), h("p", { class: "muted" }, res.message)); return; }
    if (!before) history.replaceChildren(h("h3", {}, `Purchases · ${c.name}`));
    history.querySelector("button.more")?.remove();
    history.append(...res.purchases.map(purchase));
    if (!before && !res.purchases.length) history.append(h("p", { class: "muted" }, "No purchases yet"));
    if (res.next) history.append(h("button", { type: "button", class: "more", onclick: () => purchases(c, res.next) }, "More"));
  }

  function row(c, source, attached) {
    return h("div", { class: "row", "data-customer": c.id },
      h("span", { class: "grow" }, label(c, source)),
      attached ? h("span", { class: "muted" }, "attached") : h("button", { type: "button", onclick: () => attach(c) }, "Attach"),
      h("button", { type: "button", onclick: () => consent(c, source) }, c.consent ? "Withdraw consent" : "Keep (consent)"));
  }
  function show(res, source = res.source) {
    announce(msg, "");
    const list = res.customers || (res.customer ? [res.customer] : []);
    result.replaceChildren(...list.map((c) => row(c, source, Boolean(res.cart))));
    if (list.length > 1) announce(msg, `${list.length} customers match: pick one`, "info");
    history.replaceChildren();
    if (list.length === 1 && source !== "till") purchases(list[0]);
  }
  async function identify(path, body) {
    try { show(await api(path, { method: "POST", body })); token.value = ""; }
    catch (e) { result.replaceChildren(); announce(msg, e.message, "error"); }
  }

  const find = h("form", { class: "row", autocomplete: "off", onsubmit: (ev) => {
    ev.preventDefault();
    if (token.value.trim()) identify("/customers/identify", { token: token.value.trim(), attach: true });
  } }, token, h("button", { type: "submit" }, "Find"),
  h("button", { type: "button", onclick: () => { announce(msg, "Hold the customer's badge to the reader…", "info"); identify("/customers/identify/badge", { attach: true, timeout: 20 }); } }, "Badge"));

  const name = h("input", { placeholder: "Name", "aria-label": "New customer name", required: true, maxlength: "120" });
  const email = h("input", { placeholder: "Email", "aria-label": "New customer email", type: "email", maxlength: "254" });
  const phone = h("input", { placeholder: "Phone", "aria-label": "New customer phone", maxlength: "40" });
  const card = h("input", { placeholder: "Loyalty card", "aria-label": "New customer loyalty card", maxlength: "64" });
  const agree = h("input", { type: "checkbox", id: "customer-consent" });
  for (const el of [name, email, phone, card]) el.addEventListener("keydown", keep);
  const form = h("form", { class: "grid", autocomplete: "off", onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { name: name.value.trim(), email: email.value.trim() || null, phone: phone.value.trim() || null,
      card: card.value.trim() || null, consent: agree.checked, attach: true };
    try { show(await api("/customers/register", { method: "POST", body }), "till"); form.reset(); details.open = false; }
    catch (e) { announce(msg, e.message, "error"); }
  } }, name, email, phone, card,
  h("label", { for: "customer-consent" }, agree, " The customer agrees that the shop's tills keep their record"),
  h("button", { type: "submit" }, "Register"));
  const details = h("details", {}, h("summary", {}, "New customer"), form);

  root.replaceChildren(find, msg, result, history, details);
}

const root = $("#customer-panel");
if (root) build(root);
