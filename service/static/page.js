// The purchase page: sign in (or register), record purchases, see the latest ones; the views
// (Record, Reports, Find a customer) and the helpers reports.js shares.
// All text from the server is set with textContent, never parsed as HTML.
"use strict";

const TOKEN_KEY = "purchase-feed-service.token";
const USER_KEY = "purchase-feed-service.user";
// The signed-in account ({username, role, ...} from GET /users/me): only staff use the views.
let account = null;
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(TOKEN_KEY); }

// Figures as a person reads them, everywhere on the page: 12,345 and 1,234,567.50.
function count(value) { return value.toLocaleString("en-US"); }

// "1250.5" or "1250.50" -> 125050 (whole cents: never a float sum of money).
function cents(text) {
  const [whole, fraction = ""] = text.split(".");
  return Number(whole) * 100 + Number((fraction + "00").slice(0, 2));
}

function money(centsValue) {
  return `${count(Math.floor(centsValue / 100))}.${String(centsValue % 100).padStart(2, "0")}`;
}
// The newest write's X-Consistency-Token (the primary's log position after it), while the page lives.
let consistencyToken = null;

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token()) headers.Authorization = `Bearer ${token()}`;
  // Read your own writes behind read replicas: send back the newest write's consistency token.
  if (consistencyToken) headers["X-Consistency-Token"] = consistencyToken;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const written = response.headers.get("X-Consistency-Token");
  if (written) consistencyToken = written;
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  return { ok: response.ok, status: response.status, data };
}

// Show a problem+json answer: each field's messages beside that field, the rest in `summaryId`.
function showProblem(form, prefix, summaryId, problem) {
  clearErrors(form);
  const errors = (problem && problem.errors) || {};
  let first = null;
  for (const [field, messages] of Object.entries(errors)) {
    const slot = $(`${prefix}${field}`);
    const input = form.querySelector(`[name="${CSS.escape(field)}"]`);
    if (slot && input) {
      slot.textContent = messages.join(" ");
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", slot.id);
      first = first || input;
    }
  }
  if (first) { first.focus(); return; }
  $(summaryId).textContent = (problem && problem.detail) || "Something went wrong; please try again.";
}

function clearErrors(form) {
  for (const slot of form.querySelectorAll(".error")) slot.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

// The views a signed-in person moves between (the address's #fragment): their sections, title,
// and what to do on arrival. reports.js adds its views' `enter`.
const VIEWS = {
  record: { sections: ["capture", "latest"], title: "Record a purchase", enter: () => loadLatest() },
  reports: { sections: ["reports"], title: "Reports" },
  customer: { sections: ["customer"], title: "Find a customer" },
};
const ALL_VIEW_SECTIONS = Object.values(VIEWS).flatMap((view) => view.sections);

function currentView() {
  const name = location.hash.slice(1);
  return Object.hasOwn(VIEWS, name) ? name : "record";
}

// Show the view the address names; `focusHeading` moves the focus there (a keyboard user's
// or a screen reader's place follows the click).
function showView(focusHeading) {
  if (!token() || !account) return;
  if (account.role !== "staff") { staffNeeded(focusHeading); return; }
  $("staff-needed").hidden = true;
  const name = currentView();
  const view = VIEWS[name];
  for (const id of ALL_VIEW_SECTIONS) $(id).hidden = !view.sections.includes(id);
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = view.title;
  if (view.enter) view.enter();
  if (focusHeading) $(view.sections[0]).querySelector("h2").focus();
}

window.addEventListener("hashchange", () => showView(true));

// A member signed in, or a 403 from the ledger (the role was changed meanwhile): say what is
// needed once, instead of failing request by request.
function staffNeeded(focusHeading) {
  if (account) account.role = "member";
  for (const item of document.querySelectorAll(".staff-only")) item.hidden = true;
  for (const id of ALL_VIEW_SECTIONS) $(id).hidden = true;
  $("result").hidden = true;
  $("member-name").textContent = account ? account.username : "This account";
  $("set-role-command").textContent =
    `python -m service user set-role ${account ? account.username : "USERNAME"} staff`;
  $("staff-needed").hidden = false;
  document.title = "A staff account is needed";
  if (focusHeading) $("staff-needed-title").focus();
}

function signedIn(me) {
  account = me;
  $("who").textContent = me.username;
  $("signed-in").hidden = false;
  $("account").hidden = true;
  for (const item of document.querySelectorAll(".staff-only")) item.hidden = me.role !== "staff";
  showView(false);
  if (me.role === "staff" && currentView() === "record") $("customer-email").focus();
}

function signedOut() {
  account = null;
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
  $("signed-in").hidden = true;
  $("account").hidden = false;
  $("staff-needed").hidden = true;
  for (const item of document.querySelectorAll(".staff-only")) item.hidden = true;
  for (const id of ALL_VIEW_SECTIONS) $(id).hidden = true;
  $("result").hidden = true;
  document.title = "Record a purchase";
}

// What every ledger request does with an answer that is not for this account: false when it
// took over (a 401 ends the session, a 403 says a staff account is needed).
function allowed(answer) {
  if (answer.status === 401) { sessionEnded(); return false; }
  if (answer.status === 403) { staffNeeded(true); return false; }
  return true;
}

// A 401 anywhere: the session ended (logout elsewhere, expiry); back to the sign-in form.
function sessionEnded() {
  signedOut();
  $("sign-in-error").textContent = "Your session ended; please sign in again.";
}

async function signIn(username, password, form, prefix, summaryId) {
  const answer = await api("POST", "/auth/login", { username, password });
  if (!answer.ok) { showProblem(form, prefix, summaryId, answer.data); return false; }
  sessionStorage.setItem(TOKEN_KEY, answer.data.access_token);
  sessionStorage.setItem(USER_KEY, username);
  const me = await api("GET", "/users/me");
  if (!me.ok) { showProblem(form, prefix, summaryId, me.data); return false; }
  signedIn(me.data);
  return true;
}

function fieldsOf(form) { return Object.fromEntries(new FormData(form).entries()); }

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  clearErrors(form);
  const { username, password } = fieldsOf(form);
  if (await signIn(username.trim(), password, form, "sign-in-error-", "sign-in-error")) form.reset();
});

$("register-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  clearErrors(form);
  const fields = fieldsOf(form);
  const answer = await api("POST", "/auth/register", fields);
  if (!answer.ok) { showProblem(form, "register-error-", "register-error", answer.data); return; }
  if (await signIn(fields.username, fields.password, form, "register-error-", "register-error")) form.reset();
});

$("sign-out").addEventListener("click", async () => {
  await api("POST", "/auth/logout");
  signedOut();
  $("sign-in-username").focus();
});

function purchaseBody(fields) {
  const quantity = fields.quantity.trim();
  return {
    customer: { email: fields["customer.email"], name: fields["customer.name"] },
    item: fields.item,
    // Send what was typed; the service says precisely what is wrong with it.
    quantity: /^-?\d+$/.test(quantity) ? Number(quantity) : quantity,
    unit_price: fields.unit_price.trim(),
  };
}

$("purchase-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  clearErrors(form);
  const answer = await api("POST", "/purchases", purchaseBody(fieldsOf(form)));
  if (!allowed(answer)) return;
  if (!answer.ok) { showProblem(form, "error-", "purchase-error", answer.data); return; }
  showResult(answer.data);
  form.querySelector("#item").value = "";
  form.querySelector("#item").focus();
  loadLatest();
});

function showResult(purchase) {
  const box = $("result");
  box.replaceChildren();
  const badge = document.createElement("span");
  badge.className = purchase.customer_created ? "badge" : "badge updated";
  badge.textContent = purchase.customer_created ? "new customer" : "customer updated";
  const line = document.createElement("p");
  line.textContent = `Saved purchase #${purchase.id}: ${purchase.quantity} × ${purchase.item} for ` +
    `${purchase.customer.name} <${purchase.customer.email}>, ${money(cents(purchase.total))} ${purchase.currency}. `;
  line.append(badge);
  box.append(line);
  box.hidden = false;
}

// One purchase in a list: what was bought and its total, then `meta` (who, when) in grey.
function purchaseRow(purchase, meta) {
  const row = document.createElement("li");
  const what = document.createElement("span");
  what.textContent = `${count(purchase.quantity)} × ${purchase.item} — ${money(cents(purchase.total))} ${purchase.currency}`;
  const detail = document.createElement("span");
  detail.className = "meta";
  detail.textContent = meta;
  row.append(what, detail);
  return row;
}

async function loadLatest() {
  const answer = await api("GET", "/purchases?limit=10");
  const list = $("latest-list");
  list.replaceChildren();
  if (!allowed(answer) || !answer.ok) return;
  for (const purchase of answer.data.items) {
    list.append(purchaseRow(purchase, `${purchase.customer.email} · ${new Date(purchase.purchased_at).toLocaleString()}`));
  }
  $("latest-empty").hidden = answer.data.items.length > 0;
}

// A page reload keeps the sign-in for this tab (sessionStorage), if the session is still live.
(async () => {
  if (!token()) return;
  const me = await api("GET", "/users/me");
  if (me.ok) signedIn(me.data); else signedOut();
})();
