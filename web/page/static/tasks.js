// My open tasks, soonest due first: adding one, and done, snooze, reschedule and delete on each row.

import { ApiError, api, newIdempotencyKey } from "./api.js";
import { keyedRow, renderKeyed } from "./keyed-list.js";
import { announce, clearError, failed, showError } from "./messages.js";
import { formatRelative, formatTime, fromLocalInput, timeZone, toLocalInput, toRfc3339 } from "./time.js";

const $ = (id) => document.getElementById(id);
const TASK_PAGE = 50;
const RERENDER_MS = 30_000;
// How long a task completed or deleted here can be taken back (TICKLER_UNDO_WINDOW_SECONDS); the offer
// goes half a second early, since the server's window started before its answer reached us.
const UNDO_MS = Number(document.body.dataset.undoSeconds || 0) * 1000;
const UNDO_MARGIN_MS = 500;

const state = {
  assignee: null,
  tasks: [],
  cursor: null,
  rerender: null,
  // The create not answered yet: its body and key. Submitting the same body again retries it with the
  // same key, so that a create whose answer was lost is not made twice.
  creating: null,
  // The newest `updated_at` seen of each task (ms): a change that arrives after a newer one (an answer
  // and an event crossing) is not applied over it.
  seen: new Map(),
  // The task last completed or deleted here, while it can be reopened: { task, timer }.
  undo: null,
};

// Signed in: whose tasks to list, and the form's defaults.
export function showTasks(me) {
  state.assignee = me.user_id;
  $("tasks").hidden = false;
  $("zone").textContent = `Times are in your time zone, ${timeZone}.`;
  if (!$("task-due").value) $("task-due").value = toLocalInput(nextHour());
}

export function clearTasks() {
  state.assignee = null;
  state.tasks = [];
  state.cursor = null;
  state.creating = null;
  state.seen.clear();
  hideUndo();
  clearTimeout(state.rerender);
  $("task-list").replaceChildren();
  $("tasks").hidden = true;
}

function nextHour() {
  const date = new Date(Date.now() + 3600_000);
  date.setMinutes(0, 0, 0);
  return date;
}

function fetchTasks(cursor = null) {
  const query = new URLSearchParams({ assignee_id: state.assignee, status: "open", limit: TASK_PAGE });
  if (cursor) query.set("cursor", cursor);
  return api("GET", `/v1/tasks?${query}`);
}

export async function loadTasks() {
  const page = await fetchTasks();
  state.tasks = page.items;
  state.cursor = page.next_cursor;
  renderTasks();
}

async function loadMoreTasks() {
  const page = await fetchTasks(state.cursor);
  const known = new Set(state.tasks.map((task) => task.id));
  state.tasks.push(...page.items.filter((task) => !known.has(task.id)));
  state.cursor = page.next_cursor;
  renderTasks();
}

const byDue = (a, b) => new Date(a.due_at) - new Date(b.due_at) || a.id.localeCompare(b.id);

// Whether ``task`` is at least as new as what the page has seen of it; if so it is remembered as seen.
function fresh(task) {
  const at = Date.parse(task.updated_at);
  if ((state.seen.get(task.id) ?? -Infinity) > at) return false;
  state.seen.set(task.id, at);
  return true;
}

function putTask(task) {
  if (!fresh(task)) return;
  state.tasks = state.tasks.filter((t) => t.id !== task.id);
  if (task.status === "open" && task.assignee_id === state.assignee) state.tasks.push(task);
  renderTasks();
}

// `task.changed` from the stream: created, changed, snoozed, given to someone else, done or cancelled,
// wherever that happened. The row moves, appears or goes without a reload; focus stays where it was
// unless its row went.
export function applyTask(task) {
  if (!state.assignee) return;
  const row = findRow(task.id);
  const stays = task.status === "open" && task.assignee_id === state.assignee;
  const refocus = row?.contains(document.activeElement) && !stays ? focusAfterRemoving(row) : null;
  putTask(task);
  if (refocus && !findRow(task.id)) refocus();
}

function dropTask(id) {
  state.tasks = state.tasks.filter((t) => t.id !== id);
  renderTasks();
}

function renderTasks() {
  const now = new Date();
  state.tasks.sort(byDue);
  const fill = (row, task) => fillTask(row, task, now);
  renderKeyed($("task-list"), state.tasks, { create: taskRow, fill });
  $("tasks-empty").hidden = state.tasks.length > 0;
  $("more-tasks").hidden = !state.cursor;
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
  const next = row && (row.nextElementSibling || row.previousElementSibling);
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
  const body = { title, due_at: toRfc3339(due), timezone: timeZone };
  const text = JSON.stringify(body);
  if (state.creating?.text !== text) state.creating = { text, key: newIdempotencyKey() };
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const task = await api("POST", "/v1/tasks", { body, idempotencyKey: state.creating.key });
    state.creating = null;
    clearError();
    putTask(task);
    // The stream's task.changed may have shown the task before this answer, and the next title may be
    // being typed already: clear the field only if it still holds this one.
    if ($("task-title").value.trim() === title) $("task-title").value = "";
    $("task-title").focus();
    announce(`Added “${task.title}”, due ${formatTime(new Date(task.due_at))}.`);
  } catch (error) {
    failed(error);
  } finally {
    button.disabled = false;
  }
}

async function complete(task) {
  // Where the focus goes is settled first: the stream's task.changed may take the row away before the
  // answer comes.
  const refocus = focusAfterRemoving(findRow(task.id));
  const done = await api("POST", `/v1/tasks/${task.id}/complete`);
  fresh(done);
  dropTask(task.id);
  refocus();
  offerUndo(task, `“${task.title}” is done.`);
}

// No "are you sure?": the delete can be undone instead.
async function remove(task) {
  const refocus = focusAfterRemoving(findRow(task.id));
  await api("DELETE", `/v1/tasks/${task.id}`);
  dropTask(task.id);
  refocus();
  offerUndo(task, `Deleted “${task.title}”.`);
}

function offerUndo(task, text) {
  hideUndo();
  if (UNDO_MS <= UNDO_MARGIN_MS) {
    announce(text);
    return;
  }
  state.undo = { task, timer: setTimeout(hideUndo, UNDO_MS - UNDO_MARGIN_MS) };
  $("undo-text").textContent = text;
  $("undo-button").setAttribute("aria-label", `Undo: ${task.title}`);
  $("undo").hidden = false;
}

function hideUndo() {
  if (state.undo) clearTimeout(state.undo.timer);
  state.undo = null;
  $("undo").hidden = true;
}

// Reopen what was just completed or deleted: back in the list with its reminders as they were (one
// that fell due meanwhile fires now). Too late, the API answers 409 and the page says so.
async function undo() {
  const offer = state.undo;
  if (!offer) return;
  const hadFocus = $("undo").contains(document.activeElement);
  hideUndo();
  try {
    const task = await api("POST", `/v1/tasks/${offer.task.id}/reopen`);
    clearError();
    putTask(task);
    announce(`“${task.title}” is back.`);
    if (hadFocus) findRow(task.id)?.querySelector("button")?.focus();
  } catch (error) {
    failed(error);
  }
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

// A desktop notification was clicked: show its task (or the list, if it is no longer there).
export function focusTask(id) {
  const row = findRow(id);
  if (!row) {
    $("tasks-title").focus();
    return;
  }
  row.scrollIntoView({ block: "center" });
  row.querySelector("button").focus();
}

function findRow(id) {
  return keyedRow($("task-list"), id);
}

function closeMenus(within, refocus = false) {
  for (const details of within.querySelectorAll("details[open]")) {
    details.open = false;
    if (refocus) details.querySelector("summary").focus();
  }
}

export function wireTasks() {
  $("new-task").addEventListener("submit", createTask);
  $("undo-button").addEventListener("click", () => undo());
  $("more-tasks").addEventListener("click", () => loadMoreTasks().catch(failed));
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
