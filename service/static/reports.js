// Reports (sales per day as a chart and a table, totals, top items) and Find a customer (summary
// and purchases, paged with the cursor). Every figure is read from /reports/sales and the
// customer routes; sums are added up here in whole cents. Needs page.js (api, $, showProblem,
// purchaseRow, allowed, cents, money, count).
"use strict";

const DAY_MS = 86400000;
const MAX_DAYS = 366;
const SVG = $("chart").namespaceURI;  // an <svg> in HTML is in the SVG namespace

// An axis label: 1250000 cents -> "12.5K" (dollars, compact; the exact figures are in the table).
const AXIS = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

function isoDay(date) { return date.toISOString().slice(0, 10); }

function cell(row, text, header) {
  const element = document.createElement(header ? "th" : "td");
  if (header) element.scope = "row";
  element.textContent = text;
  row.append(element);
}

// Rows of [label, figure, ...]: a number is shown grouped as the totals are (12,345), a money
// string as money (1,234.50).
function fillTable(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const values of rows) {
    const row = document.createElement("tr");
    values.forEach((value, index) => cell(row, index === 0 ? value : figure(value), index === 0));
    body.append(row);
  }
}

function figure(value) {
  return typeof value === "number" ? count(value) : money(cents(value));
}

// A total: the figure never breaks across lines; its unit may go to the next one.
function showTotal(id, text, unit) {
  const number = document.createElement("span");
  number.className = "figure";
  number.textContent = text;
  $(id).replaceChildren(number, unit ? ` ${unit}` : "");
}

// ---- Reports -------------------------------------------------------------------------------

let lastRange = null;  // what was drawn: a resize redraws it
let lastDays = null;

function defaultRange() {
  const today = new Date();
  const from = new Date(today.getTime() - 29 * DAY_MS);
  return { from: isoDay(from), to: isoDay(today) };
}

// The range's problems, beside the field that has each; null when it is good.
function rangeProblem(from, to) {
  const errors = {};
  if (!from) errors.from = ["Choose the first day."];
  if (!to) errors.to = ["Choose the last day."];
  if (from && to) {
    const days = (Date.parse(to) - Date.parse(from)) / DAY_MS + 1;
    if (days < 1) errors.to = ["Must be on or after the first day."];
    else if (days > MAX_DAYS) errors.from = [`At most ${MAX_DAYS} days at a time.`];
  }
  return Object.keys(errors).length ? { errors } : null;
}

function everyDay(from, to) {
  const days = [];
  for (let at = Date.parse(from); at <= Date.parse(to); at += DAY_MS) days.push(isoDay(new Date(at)));
  return days;
}

async function showReport() {
  const form = $("range-form");
  clearErrors(form);
  const { from, to } = fieldsOf(form);
  const problem = rangeProblem(from, to);
  if (problem) { showProblem(form, "range-error-", "range-error", problem); return; }
  const since = `${from}T00:00:00Z`;
  const until = `${isoDay(new Date(Date.parse(to) + DAY_MS))}T00:00:00Z`;
  const range = `since=${encodeURIComponent(since)}&until=${encodeURIComponent(until)}`;
  const [byDay, byItem] = await Promise.all([
    api("GET", `/reports/sales?group_by=day&limit=1000&${range}`),
    api("GET", `/reports/sales?group_by=item&limit=10&${range}`),
  ]);
  if (!allowed(byDay) || !allowed(byItem)) return;
  const failed = [byDay, byItem].find((answer) => !answer.ok);
  if (failed) { showProblem(form, "range-error-", "range-error", failed.data); return; }

  const rows = byDay.data.rows;
  const total = (field) => rows.reduce((sum, row) => sum + row[field], 0);
  showTotal("total-purchases", count(total("purchases")));
  showTotal("total-quantity", count(total("quantity")));
  showTotal("total-revenue", money(rows.reduce((sum, row) => sum + cents(row.revenue), 0)), "USD");

  $("report").hidden = false;  // first: the chart is drawn at the width it is shown at
  const byKey = new Map(rows.map((row) => [row.key, row]));
  lastRange = { from, to };
  lastDays = everyDay(from, to).map((day) => ({ day, row: byKey.get(day) }));
  drawChart();
  fillTable($("days-table"), rows.map((row) => [row.key, row.purchases, row.quantity, row.revenue]));
  fillTable($("top-items"), byItem.data.rows.map((row) => [row.key, row.purchases, row.quantity, row.revenue]));
  $("report-empty").hidden = rows.length > 0;
}

function svg(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

// Revenue per day as bars, drawn at the width the chart has (so its text stays legible).
function drawChart() {
  const chart = $("chart");
  if (!lastDays) return;
  const width = Math.max(280, Math.round(chart.parentElement.clientWidth));
  const height = 220;
  const right = 8, top = 12, bottom = 26;
  const values = lastDays.map(({ row }) => (row ? cents(row.revenue) : 0));
  const highest = Math.max(...values, 0);
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  chart.setAttribute("width", width);
  chart.setAttribute("height", height);
  chart.replaceChildren();

  // The revenue axis: its labels are drawn first and measured, so the plot starts where the
  // widest ends, whatever the figures (USD 0 to 12.5M).
  const ticks = [0, 0.5, 1].map((fraction) => {
    const label = svg("text", { class: "axis value", "text-anchor": "end" }, AXIS.format(highest * fraction / 100));
    chart.append(label);
    return { fraction, label };
  });
  const left = Math.ceil(Math.max(...ticks.map(({ label }) => label.getComputedTextLength()))) + 12;
  const plotWidth = width - left - right, plotHeight = height - top - bottom;
  const scale = highest > 0 ? plotHeight / highest : 0;
  for (const { fraction, label } of ticks) {
    const y = top + plotHeight - fraction * plotHeight;
    label.setAttribute("x", left - 6);
    label.setAttribute("y", y + 4);
    chart.insertBefore(svg("line", { class: "grid", x1: left, x2: width - right, y1: y, y2: y }), label);
  }
  const step = plotWidth / lastDays.length;
  lastDays.forEach(({ day, row }, index) => {
    const value = values[index];
    const barHeight = value * scale;
    const bar = svg("rect", {
      class: "bar",
      x: (left + index * step + step * 0.1).toFixed(2),
      y: (top + plotHeight - barHeight).toFixed(2),
      width: Math.max(1, step * 0.8).toFixed(2),
      height: barHeight.toFixed(2),
      "data-day": day,
      "data-revenue": money(value),
    });
    const sold = row ? `${row.purchases} purchase${row.purchases === 1 ? "" : "s"}` : "no purchases";
    bar.append(svg("title", {}, `${day}: ${money(value)} USD, ${sold}`));
    chart.append(bar);
  });
  const labelled = lastDays.length > 1 ? [0, lastDays.length - 1] : [0];
  for (const index of labelled) {
    const anchor = index === 0 ? "start" : "end";
    const x = index === 0 ? left : width - right;
    chart.append(svg("text", { class: "axis", x, y: height - 8, "text-anchor": anchor }, lastDays[index].day));
  }

  const sold = lastDays.filter(({ row }) => row);
  const best = sold.reduce((most, entry) => (!most || cents(entry.row.revenue) > cents(most.row.revenue) ? entry : most), null);
  $("chart-caption").textContent = `Revenue per day (USD), ${lastRange.from} to ${lastRange.to}`;
  $("chart-summary").textContent = best
    ? `${sold.length} of ${lastDays.length} days had sales; the most was ${money(cents(best.row.revenue))} USD on ${best.day}. The table below has every day's figures.`
    : `No sales on any of the ${lastDays.length} days.`;
}

let resizing = null;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(drawChart, 150);
});

$("range-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showReport();
});

VIEWS.reports.enter = () => {
  const form = $("range-form");
  if (!form.elements.from.value && !form.elements.to.value) {
    const range = defaultRange();
    form.elements.from.value = range.from;
    form.elements.to.value = range.to;
  }
  showReport();
};

// ---- Find a customer ------------------------------------------------------------------------

const PAGE_SIZE = 10;
let customerId = null;
let purchaseCount = 0;
let nextCursor = null;

function when(timestamp) {
  return timestamp ? new Date(timestamp).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }) : "-";
}

async function findCustomer() {
  const form = $("find-form");
  clearErrors(form);
  const email = form.elements.email.value.trim();
  if (!email) { showProblem(form, "find-error-", "find-error", { errors: { email: ["Enter the customer's email."] } }); return; }
  const found = await api("GET", `/customers?email=${encodeURIComponent(email)}`);
  if (!allowed(found)) return;
  if (!found.ok) { showProblem(form, "find-error-", "find-error", found.data); return; }
  const [customer] = found.data.items;
  if (!customer) {
    $("found").hidden = true;
    showProblem(form, "find-error-", "find-error", { errors: { email: ["No customer has this email."] } });
    return;
  }
  const summary = await api("GET", `/customers/${customer.id}/summary`);
  if (!allowed(summary)) return;
  if (!summary.ok) { showProblem(form, "find-error-", "find-error", summary.data); return; }
  const s = summary.data;
  $("found-name").textContent = customer.name;
  $("found-email").textContent = customer.email;
  showTotal("found-count", count(s.purchase_count));
  showTotal("found-quantity", count(s.total_quantity));
  showTotal("found-spent", money(cents(s.total_spent)), "USD");
  $("found-first").textContent = when(s.first_purchase_at);
  $("found-last").textContent = when(s.last_purchase_at);
  fillTable($("found-top"), s.top_items.map((top) => [top.item, top.quantity, top.spent]));
  customerId = customer.id;
  purchaseCount = s.purchase_count;
  nextCursor = null;
  $("found-purchases").replaceChildren();
  $("found").hidden = false;
  await morePurchases();
}

async function morePurchases() {
  const cursor = nextCursor ? `&cursor=${encodeURIComponent(nextCursor)}` : "";
  const page = await api("GET", `/customers/${customerId}/purchases?limit=${PAGE_SIZE}${cursor}`);
  if (!allowed(page)) return;
  if (!page.ok) { $("find-error").textContent = (page.data && page.data.detail) || "Could not load the purchases."; return; }
  const list = $("found-purchases");
  for (const purchase of page.data.items) list.append(purchaseRow(purchase, when(purchase.purchased_at)));
  nextCursor = page.data.next_cursor;
  $("found-more").hidden = !nextCursor;
  $("found-shown").textContent = `${count(list.children.length)} of ${count(purchaseCount)} shown`;
}

$("find-form").addEventListener("submit", (event) => {
  event.preventDefault();
  findCustomer();
});

$("found-more").addEventListener("click", async () => {
  const before = $("found-purchases").children.length;
  await morePurchases();
  // Keep the keyboard's place: the first of the rows just added (the button may be gone now).
  const first = $("found-purchases").children[before];
  if (first) { first.tabIndex = -1; first.focus(); }
});
