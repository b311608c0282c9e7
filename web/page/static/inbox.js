// The bell and its inbox: notifications newest first, the unread count on the badge, and marking read.

import { api } from "./api.js";
import { keyedRow, renderKeyed } from "./keyed-list.js";
import { announce, failed } from "./messages.js";
import { formatTime } from "./time.js";
import { dropToast } from "./toasts.js";

const $ = (id) => document.getElementById(id);
const INBOX_PAGE = 30;

const state = {
  notifications: new Map(),
  cursor: null,
  olderLoaded: false,
  unreadRequests: 0,
};

export function clearInbox() {
  state.notifications.clear();
  state.cursor = null;
  state.olderLoaded = false;
  setUnread(0);
  $("notification-list").replaceChildren();
  closeInbox(false);
}

export function newestNotificationId() {
  return Math.max(0, ...state.notifications.keys());
}

export async function loadInbox() {
  const page = await api("GET", `/v1/notifications?limit=${INBOX_PAGE}`);
  // What the server says now wins; older pages already loaded stay, and so does their cursor.
  for (const item of page.items) state.notifications.set(item.id, item);
  if (!state.olderLoaded) state.cursor = page.next_cursor;
  renderInbox();
}

async function loadOlder() {
  const page = await api("GET", `/v1/notifications?limit=${INBOX_PAGE}&cursor=${state.cursor}`);
  for (const item of page.items) if (!state.notifications.has(item.id)) state.notifications.set(item.id, item);
  state.cursor = page.next_cursor;
  state.olderLoaded = true;
  renderInbox();
}

// The badge shows the server's count; a slower answer never overwrites a newer one.
export async function refreshUnread() {
  const request = ++state.unreadRequests;
  const { count } = await api("GET", "/v1/notifications/unread-count");
  if (request === state.unreadRequests) setUnread(count);
}

// A count that came with an answer or an event: newer than any count request still in flight.
function showUnread(count) {
  state.unreadRequests++;
  setUnread(count);
}

function setUnread(count) {
  const badge = $("badge");
  badge.textContent = String(count);
  badge.dataset.count = String(count);
  document.title = count > 0 ? `(${count}) Tickler` : "Tickler";
}

function renderInbox() {
  const items = [...state.notifications.values()].sort((a, b) => b.id - a.id);
  renderKeyed($("notification-list"), items, { create: notificationRow, fill: fillNotification });
  $("inbox-empty").hidden = items.length > 0;
  $("older").hidden = !state.cursor;
  $("read-all").disabled = !items.some((n) => !n.read_at);
}

function notificationRow(id) {
  const row = $("notification-row").content.firstElementChild.cloneNode(true);
  row.querySelector(".mark-read").addEventListener("click", () => markRead(id));
  return row;
}

function fillNotification(row, item) {
  row.classList.toggle("unread", !item.read_at);
  row.querySelector(".notification-title").textContent = item.title;
  const fired = row.querySelector(".fired");
  fired.dateTime = item.created_at;
  fired.textContent = formatTime(new Date(item.created_at));
  const button = row.querySelector(".mark-read");
  button.hidden = Boolean(item.read_at);
  button.setAttribute("aria-label", `Mark read: ${item.title}`);
}

// A notification from the stream: what it says now wins.
export function putNotification(item) {
  state.notifications.set(item.id, item);
  renderInbox();
}

function setRead(ids, readAt) {
  for (const id of ids) {
    const item = state.notifications.get(id);
    if (item) state.notifications.set(id, { ...item, read_at: readAt });
    if (readAt) dropToast(id);
  }
  renderInbox();
}

// `notification.read` from the stream: marked read here or in another tab.
export function applyRead({ ids, read_at: readAt, unread_count: count }) {
  setRead(ids, readAt);
  showUnread(count);
}

export async function markRead(id) {
  const row = keyedRow($("notification-list"), id);
  const hadFocus = row && row.contains(document.activeElement);
  try {
    const item = await api("POST", `/v1/notifications/${id}/read`);
    state.notifications.set(item.id, item);
    setRead([item.id], item.read_at);
    if (hadFocus) $("inbox-title").focus();
    // The answer has no count; the stream's notification.read brings it too, this is for when it is down.
    await refreshUnread();
  } catch (error) {
    failed(error);
  }
}

async function readAll() {
  try {
    const result = await api("POST", "/v1/notifications/read-all");
    const now = new Date().toISOString();
    setRead(
      [...state.notifications.values()].filter((n) => !n.read_at).map((n) => n.id),
      now,
    );
    showUnread(result.unread_count);
    announce("All notifications marked read.");
  } catch (error) {
    failed(error);
  }
}

function openInbox() {
  $("inbox").hidden = false;
  $("bell").setAttribute("aria-expanded", "true");
  $("inbox-title").setAttribute("tabindex", "-1");
  $("inbox-title").focus();
}

export function closeInbox(refocus = true) {
  if ($("inbox").hidden) return;
  $("inbox").hidden = true;
  $("bell").setAttribute("aria-expanded", "false");
  if (refocus) $("bell").focus();
}

export function wireInbox() {
  $("older").addEventListener("click", () => loadOlder().catch(failed));
  $("read-all").addEventListener("click", readAll);
  $("bell").addEventListener("click", () => ($("inbox").hidden ? openInbox() : closeInbox()));
  $("inbox-close").addEventListener("click", () => closeInbox());
}
