// The page: sign in, my open tasks, the bell, and live notifications. Plain DOM, no framework.

import { ApiError, api } from "./api.js";
import { NotificationStream } from "./stream.js";
import { formatRelative, formatTime, fromLocalInput, timeZone, toLocalInput, toRfc3339 } from "./time.js";

const $ = (id) => document.getElementById(id);
const DEV = document.body.dataset.dev === "true";
const TASK_PAGE = 50;
const INBOX_PAGE = 30;
const MAX_TOASTS = 3;
const RERENDER_MS = 30_000;
const EXPIRED = "Your session has ended. Sign in again.";

const state = {
  me: null,
  tasks: [],
  tasksCursor: null,
  notifications: new Map(),
  inboxCursor: null,
  olderLoaded: false,
  unreadRequests: 0,
  toasted: new Set(),
  rerender: null,
  pending: new Map(),
};

// Many events in a burst (a replay after a reconnect) make one request, not one each.
function soon(fn, ms = 200) {
  if (state.pending.has(fn)) return;
  state.pending.set(
    fn,
    setTimeout(() => {
      state.pending.delete(fn);
      fn().catch(failed);
    }, ms),
  );
}

const stream = new NotificationStream({
  state: showLive,
  notification: onNotification,
  read: onRead,
  resync: () => Promise.all([loadInbox(), refreshUnread(), loadTasks()]).catch(failed),
  expired: () => showSignIn(EXPIRED),
  check: async () => {
    try {
      await api("GET", "/v1/session");
      return true;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return false;
      throw error;
    }
  },
});

// -- messages ---------------------------------------------------------------------------------------

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function announce(message) {
  // Cleared first, so the same words twice are announced twice.
  $("announce").textContent = "";
  requestAnimationFrame(() => {
    $("announce").textContent = message;
  });
}

// Every failed call ends here: a 401 means the session is gone, anything else is shown as the API said it.
function failed(error) {
  if (error instanceof ApiError && error.status === 401 && state.me) {
    showSignIn(EXPIRED);
    return;
  }
  showError(error instanceof ApiError ? error.message : "Something went wrong in the page; reload it.");
  if (!(error instanceof ApiError)) console.error(error);
}

const LIVE_TEXT = {
  off: () => "Not connected",
  connecting: () => "Connecting…",
  live: () => "Live",
  reconnecting: () => "Reconnecting…",
  offline: (seconds) => `Offline, retrying in ${seconds} s`,
};

function showLive(name, seconds) {
  $("live").dataset.state = name;
  $("live-text").textContent = LIVE_TEXT[name](seconds);
}

// -- signing in and out -----------------------------------------------------------------------------

function showSignIn(reason = "") {
  stream.stop();
  state.me = null;
  state.tasks = [];
  state.tasksCursor = null;
  state.notifications.clear();
  state.inboxCursor = null;
  state.olderLoaded = false;
  state.toasted.clear();
  clearTimeout(state.rerender);
  for (const timer of state.pending.values()) clearTimeout(timer);
  state.pending.clear();
  setUnread(0);
  $("toasts").replaceChildren();
  $("task-list").replaceChildren();
  $("notification-list").replaceChildren();
  closeInbox(false);
  showLive("off");
  $("account").hidden = true;
  $("tasks").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-reason").textContent = reason;
  $("sign-in-reason").hidden = !reason;
  document.title = "Tickler";
  const first = $("sign-in").querySelector("input");
  if (first && reason) first.focus();
}

async function signedIn(me) {
  state.me = me;
  clearError();
  $("sign-in").hidden = true;
  $("account").hidden = false;
  $("tasks").hidden = false;
  $("who").textContent = `User ${me.user_id} · ${me.organization_id}`;
  $("zone").textContent = `Times are in your time zone, ${timeZone}.`;
  if (!$("task-due").value) $("task-due").value = toLocalInput(nextHour());
  const [inboxLoaded] = await Promise.all([
    loadInbox().then(() => true, (error) => (failed(error), false)),
    loadTasks().catch(failed),
    refreshUnread().catch(failed),
  ]);
  if (state.me !== me) return;
  // Replay from the newest notification shown, so that nothing fired between that fetch and now is lost;
  // if the inbox did not load, start from now rather than replay (and toast) the whole history.
  stream.start(inboxLoaded ? newestNotificationId() : null);
}

function nextHour() {
  const date = new Date(Date.now() + 3600_000);
  date.setMinutes(0, 0, 0);
  return date;
}

// A Secure cookie set over plain http (other than localhost) is dropped without a word: say so.
async function sessionKept() {
  try {
    return await api("GET", "/v1/session");
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) throw error;
    throw new ApiError(
      401,
      "Signed in, but the browser did not keep the session cookie. It is Secure: serve Tickler over " +
        "https, or set TICKLER_SESSION_COOKIE_SECURE=false on plain http.",
    );
  }
}

async function submitSignIn(event, call) {
  event.preventDefault();
  const button = event.target.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await call(new FormData(event.target));
    const me = await sessionKept();
    event.target.reset();
    await signedIn(me);
    $("task-title").focus();
  } catch (error) {
    $("sign-in-reason").textContent = error instanceof ApiError ? error.message : String(error);
    $("sign-in-reason").hidden = false;
  } finally {
    button.disabled = false;
  }
}

// -- tasks ------------------------------------------------------------------------------------------

async function loadTasks() {
  const query = new URLSearchParams({ assignee_id: state.me.user_id, status: "open", limit: TASK_PAGE });
  const page = await api("GET", `/v1/tasks?${query}`);
  state.tasks = page.items;
  state.tasksCursor = page.next_cursor;
  renderTasks();
}

async function loadMoreTasks() {
  const query = new URLSearchParams({
    assignee_id: state.me.user_id, status: "open", limit: TASK_PAGE, cursor: state.tasksCursor,
  });
  const page = await api("GET", `/v1/tasks?${query}`);
  const known = new Set(state.tasks.map((task) => task.id));
  state.tasks.push(...page.items.filter((task) => !known.has(task.id)));
  state.tasksCursor = page.next_cursor;
  renderTasks();
}

const byDue = (a, b) => new Date(a.due_at) - new Date(b.due_at) || a.id.localeCompare(b.id);

function putTask(task) {
  state.tasks = state.tasks.filter((t) => t.id !== task.id);
  if (task.status === "open") state.tasks.push(task);
  renderTasks();
}

function dropTask(id) {
  state.tasks = state.tasks.filter((t) => t.id !== id);
  renderTasks();
}

// Rows are kept and updated in place, never rebuilt, so that focus and open menus survive a render.
function renderTasks() {
  const list = $("task-list");
  const now = new Date();
  state.tasks.sort(byDue);
  const keep = new Set(state.tasks.map((task) => task.id));
  for (const row of [...list.children]) if (!keep.has(row.dataset.id)) row.remove();
  state.tasks.forEach((task, index) => {
    const row = list.querySelector(`li[data-id="${task.id}"]`) || taskRow(task.id);
    fillTask(row, task, now);
    if (list.children[index] !== row) list.insertBefore(row, list.children[index] || null);
  });
  $("tasks-empty").hidden = state.tasks.length > 0;
  $("more-tasks").hidden = !state.tasksCursor;
  scheduleRerender(now);
}

// Overdue marks and "in 5 minutes" change with the clock: render again when the next task comes due.
function scheduleRerender(now) {
  clearTimeout(state.rerender);
  const upcoming = state.tasks.map((t) => new Date(t.due_at) - now).filter((ms) => ms > 0);
  const wait = Math.min(RERENDER_MS, ...upcoming.map((ms) => ms + 50));
  state.rerender = setTimeout(renderTasks, wait);
}

function taskRow(id) {
  const row = $("task-row").content.firstElementChild.cloneNode(true);
  row.dataset.id = id;
  row.querySelector(".task-title").id = `task-title-${id}`;
  const input = row.querySelector(".reschedule input");
  input.id = `due-${id}`;
  row.querySelector(".reschedule label").htmlFor = input.id;
  row.querySelector(".done").addEventListener("click", () => act(row, complete));
  row.querySelector(".delete").addEventListener("click", () => act(row, remove));
  for (const button of row.querySelectorAll(".snooze button")) {
    button.addEventListener("click", () => act(row, (task) => snooze(task, Number(button.dataset.minutes))));
  }
  row.querySelector(".reschedule form").addEventListener("submit", (event) => {
    event.preventDefault();
    act(row, (task) => reschedule(task, input.value));
  });
  row.querySelector(".reschedule").addEventListener("toggle", (event) => {
    if (event.target.open) input.focus();
  });
  return row;
}

function fillTask(row, task, now) {
  const due = new Date(task.due_at);
  const overdue = due <= now;
  row.classList.toggle("overdue", overdue);
  row.querySelector(".task-title").textContent = task.title;
  const time = row.querySelector("time");
  time.dateTime = task.due_at;
  time.textContent = `Due ${formatTime(due)}, ${formatRelative(due, now)}`;
  // The reschedule field starts from the current due time, unless someone is editing it.
  const reschedule = row.querySelector(".reschedule");
  if (!reschedule.open) reschedule.querySelector("input").value = toLocalInput(due);
  // The visible word first, then which task: "Done: Call Ana" to a screen reader.
  row.querySelector(".done").setAttribute("aria-label", `Done: ${task.title}`);
  row.querySelector(".delete").setAttribute("aria-label", `Delete: ${task.title}`);
  row.querySelector(".snooze summary").setAttribute("aria-label", `Snooze: ${task.title}`);
  row.querySelector(".reschedule summary").setAttribute("aria-label", `Reschedule: ${task.title}`);
}

// One change at a time per row; the row stays in place until the API has answered.
async function act(row, change) {
  const task = state.tasks.find((t) => t.id === row.dataset.id);
  if (!task || row.classList.contains("busy")) return;
  row.classList.add("busy");
  row.setAttribute("aria-busy", "true");
  try {
    await change(task);
    clearError();
  } catch (error) {
    failed(error);
    // 404 or 409: someone or something else changed it; show what is true now.
    if (error instanceof ApiError && [404, 409].includes(error.status)) loadTasks().catch(failed);
  } finally {
    row.classList.remove("busy");
    row.removeAttribute("aria-busy");
  }
}

function focusAfterRemoving(row) {
  const next = row.nextElementSibling || row.previousElementSibling;
  return () => (next ? next.querySelector("button") : $("tasks-title")).focus();
}

async function createTask(event) {
  event.preventDefault();
  const form = event.target;
  const title = $("task-title").value.trim();
  const due = fromLocalInput($("task-due").value);
  if (!title || !due) {
    showError("Give the task a title and a due time.");
    return;
  }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const task = await api("POST", "/v1/tasks", { body: { title, due_at: toRfc3339(due), timezone: timeZone } });
    clearError();
    putTask(task);
    $("task-title").value = "";
    $("task-title").focus();
    announce(`Added “${task.title}”, due ${formatTime(new Date(task.due_at))}.`);
  } catch (error) {
    failed(error);
  } finally {
    button.disabled = false;
  }
}

async function complete(task) {
  await api("POST", `/v1/tasks/${task.id}/complete`);
  const refocus = focusAfterRemoving(findRow(task.id));
  dropTask(task.id);
  refocus();
  announce(`“${task.title}” is done.`);
}

async function remove(task) {
  if (!window.confirm(`Delete “${task.title}”? Its reminders will not fire.`)) return;
  await api("DELETE", `/v1/tasks/${task.id}`);
  const refocus = focusAfterRemoving(findRow(task.id));
  dropTask(task.id);
  refocus();
  announce(`Deleted “${task.title}”.`);
}

async function snooze(task, minutes) {
  const changed = await api("POST", `/v1/tasks/${task.id}/snooze`, { body: { minutes } });
  closeMenus(findRow(task.id), true);
  putTask(changed);
  announce(`Snoozed “${changed.title}” until ${formatTime(new Date(changed.due_at))}.`);
}

async function reschedule(task, value) {
  const due = fromLocalInput(value);
  if (!due) throw new ApiError(0, "Pick the new due time.");
  const changed = await api("PATCH", `/v1/tasks/${task.id}`, { body: { due_at: toRfc3339(due) } });
  closeMenus(findRow(task.id), true);
  putTask(changed);
  announce(`Rescheduled “${changed.title}” to ${formatTime(new Date(changed.due_at))}.`);
}

function findRow(id) {
  return $("task-list").querySelector(`li[data-id="${id}"]`);
}

function closeMenus(within, refocus = false) {
  for (const details of within.querySelectorAll("details[open]")) {
    details.open = false;
    if (refocus) details.querySelector("summary").focus();
  }
}

// -- the inbox --------------------------------------------------------------------------------------

function newestNotificationId() {
  return Math.max(0, ...state.notifications.keys());
}

async function loadInbox() {
  const page = await api("GET", `/v1/notifications?limit=${INBOX_PAGE}`);
  // What the server says now wins; older pages already loaded stay, and so does their cursor.
  for (const item of page.items) state.notifications.set(item.id, item);
  if (!state.olderLoaded) state.inboxCursor = page.next_cursor;
  renderInbox();
}

async function loadOlder() {
  const page = await api("GET", `/v1/notifications?limit=${INBOX_PAGE}&cursor=${state.inboxCursor}`);
  for (const item of page.items) if (!state.notifications.has(item.id)) state.notifications.set(item.id, item);
  state.inboxCursor = page.next_cursor;
  state.olderLoaded = true;
  renderInbox();
}

// The badge shows the server's count; a slower answer never overwrites a newer one.
async function refreshUnread() {
  const request = ++state.unreadRequests;
  const { count } = await api("GET", "/v1/notifications/unread-count");
  if (request === state.unreadRequests) setUnread(count);
}

function setUnread(count) {
  const badge = $("badge");
  badge.textContent = String(count);
  badge.dataset.count = String(count);
  document.title = count > 0 ? `(${count}) Tickler` : "Tickler";
}

function renderInbox() {
  const list = $("notification-list");
  const items = [...state.notifications.values()].sort((a, b) => b.id - a.id);
  const keep = new Set(items.map((n) => String(n.id)));
  for (const row of [...list.children]) if (!keep.has(row.dataset.id)) row.remove();
  items.forEach((item, index) => {
    const row = list.querySelector(`li[data-id="${item.id}"]`) || notificationRow(item.id);
    fillNotification(row, item);
    if (list.children[index] !== row) list.insertBefore(row, list.children[index] || null);
  });
  $("inbox-empty").hidden = items.length > 0;
  $("older").hidden = !state.inboxCursor;
  $("read-all").disabled = !items.some((n) => !n.read_at);
}

function notificationRow(id) {
  const row = $("notification-row").content.firstElementChild.cloneNode(true);
  row.dataset.id = String(id);
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

function setRead(ids, readAt) {
  for (const id of ids) {
    const item = state.notifications.get(id);
    if (item) state.notifications.set(id, { ...item, read_at: readAt });
    if (readAt) dropToast(id);
  }
  renderInbox();
}

async function markRead(id) {
  const row = $("notification-list").querySelector(`li[data-id="${id}"]`);
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
    state.unreadRequests++;
    setUnread(result.unread_count);
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

function closeInbox(refocus = true) {
  if ($("inbox").hidden) return;
  $("inbox").hidden = true;
  $("bell").setAttribute("aria-expanded", "false");
  if (refocus) $("bell").focus();
}

// -- live events ------------------------------------------------------------------------------------

function onNotification(item) {
  state.notifications.set(item.id, item);
  renderInbox();
  if (!item.read_at && !state.toasted.has(item.id)) toast(item);
  soon(refreshUnread);
  // A task that fired is overdue now, or (recurring) due again later: show what the server says.
  soon(loadTasks);
}

function onRead({ ids, read_at: readAt, unread_count: count }) {
  setRead(ids, readAt);
  // Newer than any count request still in flight.
  state.unreadRequests++;
  setUnread(count);
}

function toast(item) {
  state.toasted.add(item.id);
  const box = $("toasts");
  while (box.children.length >= MAX_TOASTS) box.firstElementChild.remove();
  const element = document.createElement("div");
  element.className = "toast";
  element.dataset.id = String(item.id);
  const title = document.createElement("p");
  title.className = "toast-title";
  title.textContent = `Reminder: ${item.title}`;
  const when = document.createElement("p");
  when.textContent = `Due ${formatTime(new Date(item.due_at))}`;
  const actions = document.createElement("div");
  actions.className = "toast-actions";
  const read = document.createElement("button");
  read.type = "button";
  read.textContent = "Mark read";
  read.addEventListener("click", () => markRead(item.id));
  const dismiss = document.createElement("button");
  dismiss.type = "button";
  dismiss.textContent = "Dismiss";
  dismiss.addEventListener("click", () => element.remove());
  actions.append(read, dismiss);
  element.append(title, when, actions);
  box.append(element);
}

function dropToast(id) {
  $("toasts").querySelector(`.toast[data-id="${id}"]`)?.remove();
}

// -- wiring -----------------------------------------------------------------------------------------

function wire() {
  if (DEV) {
    $("dev-sign-in").addEventListener("submit", (event) =>
      submitSignIn(event, (form) =>
        api("POST", "/v1/session/dev", {
          body: { user_id: form.get("user_id").trim(), organization_id: form.get("organization_id").trim() },
        }),
      ),
    );
  } else {
    $("token-sign-in").addEventListener("submit", (event) =>
      submitSignIn(event, (form) => api("POST", "/v1/session", { token: form.get("token").trim() })),
    );
  }
  $("sign-out").addEventListener("click", async () => {
    try {
      await api("DELETE", "/v1/session");
      showSignIn();
      $("sign-in").querySelector("input").focus();
    } catch (error) {
      failed(error);
    }
  });
  $("new-task").addEventListener("submit", createTask);
  $("more-tasks").addEventListener("click", () => loadMoreTasks().catch(failed));
  $("older").addEventListener("click", () => loadOlder().catch(failed));
  $("read-all").addEventListener("click", readAll);
  $("bell").addEventListener("click", () => ($("inbox").hidden ? openInbox() : closeInbox()));
  $("inbox-close").addEventListener("click", () => closeInbox());
  $("error-close").addEventListener("click", clearError);
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    const menu = document.activeElement?.closest("details[open]");
    if (menu) {
      menu.open = false;
      menu.querySelector("summary").focus();
    } else if (!$("inbox").hidden) {
      closeInbox();
    }
  });
  // A click elsewhere closes an open snooze or reschedule menu.
  document.addEventListener("click", (event) => {
    for (const details of $("task-list").querySelectorAll("details[open]")) {
      if (!details.contains(event.target)) details.open = false;
    }
  });
  // One menu open at a time.
  $("task-list").addEventListener(
    "toggle",
    (event) => {
      if (!event.target.open) return;
      for (const details of $("task-list").querySelectorAll("details[open]")) {
        if (details !== event.target) details.open = false;
      }
    },
    true,
  );
}

async function boot() {
  wire();
  try {
    await signedIn(await api("GET", "/v1/session"));
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) showSignIn();
    else {
      showSignIn();
      failed(error);
    }
  }
}

boot();
