// The purchase page: sign in (or register), record purchases, see the latest ones.
// All text from the server is set with textContent, never parsed as HTML.
"use strict";

const TOKEN_KEY = "purchase-feed-service.token";
const USER_KEY = "purchase-feed-service.user";
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(TOKEN_KEY); }
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

function signedIn(username) {
  $("who").textContent = username;
  $("signed-in").hidden = false;
  $("account").hidden = true;
  $("capture").hidden = false;
  $("latest").hidden = false;
  loadLatest();
  $("customer-email").focus();
}

function signedOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
  $("signed-in").hidden = true;
  $("account").hidden = false;
  $("capture").hidden = true;
  $("latest").hidden = true;
  $("result").hidden = true;
}

async function signIn(username, password, form, prefix, summaryId) {
  const answer = await api("POST", "/auth/login", { username, password });
  if (!answer.ok) { showProblem(form, prefix, summaryId, answer.data); return false; }
  sessionStorage.setItem(TOKEN_KEY, answer.data.access_token);
  sessionStorage.setItem(USER_KEY, username);
  signedIn(username);
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
  if (answer.status === 401) { signedOut(); $("sign-in-error").textContent = "Your session ended; please sign in again."; return; }
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
    `${purchase.customer.name} <${purchase.customer.email}>, ${purchase.total} ${purchase.currency}. `;
  line.append(badge);
  box.append(line);
  box.hidden = false;
}

async function loadLatest() {
  const answer = await api("GET", "/purchases?limit=10");
  const list = $("latest-list");
  list.replaceChildren();
  if (!answer.ok) return;
  for (const purchase of answer.data.items) {
    const row = document.createElement("li");
    const what = document.createElement("span");
    what.textContent = `${purchase.quantity} × ${purchase.item} — ${purchase.total} ${purchase.currency}`;
    const who = document.createElement("span");
    who.className = "meta";
    who.textContent = `${purchase.customer.email} · ${new Date(purchase.purchased_at).toLocaleString()}`;
    row.append(what, who);
    list.append(row);
  }
  $("latest-empty").hidden = answer.data.items.length > 0;
}

// A page reload keeps the sign-in for this tab (sessionStorage), if the session is still live.
(async () => {
  if (!token()) return;
  const me = await api("GET", "/users/me");
  if (me.ok) signedIn(me.data.username); else signedOut();
})();
