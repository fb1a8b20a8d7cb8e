// Technician pages: devices with health and self-tests, network/MQTT and outbox backlog,
// versions, the log, and the configuration with secrets masked. Needs the technician role.
import { $, announce, api, h, live, state } from "/static/common.js";

let conn = null;
const TESTS = { printer: "Test print", drawer: "Open drawer", display: "Display test", scanner: "Scan test", scale: "Read weight", terminal: "Terminal status" };

function facts(el, pairs) {
  el.replaceChildren(...pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v === null || v === undefined ? "–" : String(v))]));
}

function renderDevices(devices) {
  $("#device-rows").replaceChildren(...devices.map((d) => h("tr", { "data-device": d.name },
    h("th", { scope: "row" }, d.name),
    h("td", {}, h("span", { class: `badge-health ${d.health}` }, d.health)),
    h("td", {}, d.reason || "", d.last_error && d.last_error !== d.reason ? h("div", { class: "muted" }, `last error: ${d.last_error}`) : null),
    h("td", {}, `${d.backend}${d.simulated ? " (simulated)" : ""}`),
    h("td", {}, TESTS[d.name] ? h("button", { type: "button", "data-test": d.name, onclick: () => test(d.name) }, TESTS[d.name]) : ""))));
}

async function test(name) {
  const out = $("#test-result");
  out.textContent = name === "scanner" ? "Scan a barcode now…" : `Testing ${name}…`;
  try {
    const r = await api(`/tech/test/${name}`, { method: "POST" });
    out.textContent = `${name}: ${r.ok ? "OK" : "FAILED"} – ${r.detail}`;
    out.className = r.ok ? "ok" : "bad";
  } catch (e) { out.textContent = `${name}: ${e.message}`; out.className = "bad"; }
  loadDevices();
}

async function loadDevices() { renderDevices(await api("/tech/devices")); }

async function loadSync() {
  const s = await api("/tech/sync");
  const ifaces = Object.entries(s.network.interfaces || {}).map(([n, st]) => `${n}: ${st}`).join(", ");
  facts($("#sync-info"), [["Host name", s.network.hostname], ["Interfaces", ifaces], ["Sync", s.enabled ? "enabled" : "off"],
    ["MQTT connected", s.connected ? "yes" : "no"], ["Brokers", (s.brokers || []).join(", ")],
    ["Outbox backlog", `${s.backlog.size} event(s)`], ["Oldest unconfirmed", s.backlog.oldest],
    ["Last sequence", s.state ? s.state.last_seq : null], ["Last acknowledged", s.state ? s.state.last_acked_seq : null],
    ["Catalog version", s.state ? s.state.catalog_version : null], ["Alerts", s.state ? s.state.alerts.join(", ") || "none" : null]]);
}

async function loadVersions() {
  const v = await api("/tech/versions");
  const prov = v.provisioning || {};
  const enrolled = prov.identity ? `${prov.identity.store_id}/${prov.identity.device_id}` : "not enrolled";
  facts($("#version-info"), [["tillbox", v.tillbox], ["Python", v.python], ["SQLite", v.sqlite], ["Ledger schema", v.ledger_schema],
    ["Uptime", `${v.uptime_s} s`], ["Provisioning", prov.error ? `FAILED: ${prov.error}` : enrolled], ...Object.entries(v.packages)]);
}

async function loadLogs() {
  const logs = await api("/tech/logs?limit=200");
  $("#log-view").textContent = logs.map((r) => `${r.time} ${r.level} ${r.logger}: ${r.message}`).join("\n") || "(no messages)";
}

async function loadConfig() { $("#config-view").textContent = JSON.stringify(await api("/tech/config"), null, 2); }

async function enter(session) {
  state.token = session.token;
  try {
    await Promise.all([loadDevices(), loadSync(), loadVersions(), loadLogs(), loadConfig()]);
  } catch (e) {
    state.token = null;
    return announce($("#login-notice"), e.message, "error");
  }
  $("#who").textContent = session.staff.name;
  $("#login").classList.add("hidden");
  $("#tech").classList.remove("hidden");
  $("#logout").classList.remove("hidden");
  conn = live({ health: () => loadDevices(), alerts: () => loadSync(), "session.expired": () => location.reload() },
    { onState: (up) => { const c = $("#conn"); c.textContent = up ? "live" : "offline"; c.className = `badge-health ${up ? "ok" : "unavailable"}`; } });
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try { await enter(await api("/session/pin", { method: "POST", body: { staff_id: $("#staff-id").value.trim(), pin: $("#pin").value }, token: null })); }
  catch (e) { $("#pin").value = ""; announce($("#login-notice"), e.message, "error"); }
});
$("#logout").addEventListener("click", async () => { try { await api("/session", { method: "DELETE" }); } finally { if (conn) conn.close(); location.reload(); } });
$("#sync-refresh").addEventListener("click", () => loadSync().catch((e) => announce($("#notice"), e.message, "error")));
$("#logs-refresh").addEventListener("click", () => loadLogs().catch((e) => announce($("#notice"), e.message, "error")));
$("#staff-id").focus();
