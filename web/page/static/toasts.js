// Toasts: a reminder that fired, shown until it is read or dismissed; a few at a time, the oldest go first.

import { formatTime } from "./time.js";

const $ = (id) => document.getElementById(id);
const MAX_TOASTS = 3;

// Each notification is toasted once, even when a replay after a reconnect brings it again.
const toasted = new Set();

export function toast(item, markRead) {
  if (toasted.has(item.id)) return;
  toasted.add(item.id);
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
  read.addEventListener("click", markRead);
  const dismiss = document.createElement("button");
  dismiss.type = "button";
  dismiss.textContent = "Dismiss";
  dismiss.addEventListener("click", () => element.remove());
  actions.append(read, dismiss);
  element.append(title, when, actions);
  box.append(element);
}

export function dropToast(id) {
  $("toasts").querySelector(`.toast[data-id="${id}"]`)?.remove();
}

export function clearToasts() {
  toasted.clear();
  $("toasts").replaceChildren();
}
