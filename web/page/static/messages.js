// What the page tells the person besides its lists: the error banner, words for screen readers, and what
// a failed call means.

import { ApiError } from "./api.js";

const $ = (id) => document.getElementById(id);

// Whether a 401 means that the session has ended, and what then, is for page.js to say: it knows who is in.
let unauthorized = () => false;

export function onUnauthorized(handler) {
  unauthorized = handler;
}

export function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

export function clearError() {
  $("error").hidden = true;
}

export function announce(message) {
  // Cleared first, so the same words twice are announced twice.
  $("announce").textContent = "";
  requestAnimationFrame(() => {
    $("announce").textContent = message;
  });
}

// Every failed call ends here: a 401 may mean the session is gone, anything else is shown as the API said it.
export function failed(error) {
  if (error instanceof ApiError && error.status === 401 && unauthorized()) return;
  showError(error instanceof ApiError ? error.message : "Something went wrong in the page; reload it.");
  if (!(error instanceof ApiError)) console.error(error);
}
