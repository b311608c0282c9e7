// The page's entry: signing in and out, the live stream, and the wiring of tasks, inbox and toasts.
// Plain DOM and browser modules, no framework and no build step.

import { ApiError, api } from "./api.js";
import {
  applyRead,
  clearInbox,
  closeInbox,
  loadInbox,
  markRead,
  newestNotificationId,
  putNotification,
  refreshUnread,
  wireInbox,
} from "./inbox.js";
import { clearError, failed, onUnauthorized } from "./messages.js";
import { NotificationStream } from "./stream.js";
import { clearTasks, loadTasks, showTasks, wireTasks } from "./tasks.js";
import { clearToasts, toast } from "./toasts.js";

const $ = (id) => document.getElementById(id);
const DEV = document.body.dataset.dev === "true";
const EXPIRED = "Your session has ended. Sign in again.";

// Who is signed in (GET /v1/session's answer), or null.
let me = null;
const pending = new Map();

// Many events in a burst (a replay after a reconnect) make one request, not one each.
function soon(fn, ms = 200) {
  if (pending.has(fn)) return;
  pending.set(
    fn,
    setTimeout(() => {
      pending.delete(fn);
      fn().catch(failed);
    }, ms),
  );
}

const stream = new NotificationStream({
  state: showLive,
  notification: onNotification,
  read: applyRead,
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

function onNotification(item) {
  putNotification(item);
  if (!item.read_at) toast(item, () => markRead(item.id));
  soon(refreshUnread);
  // A task that fired is overdue now, or (recurring) due again later: show what the server says.
  soon(loadTasks);
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
  me = null;
  for (const timer of pending.values()) clearTimeout(timer);
  pending.clear();
  clearTasks();
  clearInbox();
  clearToasts();
  showLive("off");
  $("account").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-reason").textContent = reason;
  $("sign-in-reason").hidden = !reason;
  document.title = "Tickler";
  const first = $("sign-in").querySelector("input");
  if (first && reason) first.focus();
}

async function signedIn(session) {
  me = session;
  clearError();
  $("sign-in").hidden = true;
  $("account").hidden = false;
  $("who").textContent = `User ${me.user_id} · ${me.organization_id}`;
  showTasks(me);
  const [inboxLoaded] = await Promise.all([
    loadInbox().then(() => true, (error) => (failed(error), false)),
    loadTasks().catch(failed),
    refreshUnread().catch(failed),
  ]);
  if (me !== session) return;
  // Replay from the newest notification shown, so that nothing fired between that fetch and now is lost;
  // if the inbox did not load, start from now rather than replay (and toast) the whole history.
  stream.start(inboxLoaded ? newestNotificationId() : null);
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
    const session = await sessionKept();
    event.target.reset();
    await signedIn(session);
    $("task-title").focus();
  } catch (error) {
    $("sign-in-reason").textContent = error instanceof ApiError ? error.message : String(error);
    $("sign-in-reason").hidden = false;
  } finally {
    button.disabled = false;
  }
}

// -- wiring -----------------------------------------------------------------------------------------

function wire() {
  // A 401 while signed in: the session has ended.
  onUnauthorized(() => {
    if (!me) return false;
    showSignIn(EXPIRED);
    return true;
  });
  if (DEV) {
    $("dev-sign-in").addEventListener("submit", (event) =>
      submitSignIn(event, (form) =>
        api("POST", "/v1/session/dev", {
          body: {
            user_id: form.get("user_id").trim(),
            organization_id: form.get("organization_id").trim(),
            operator: form.get("operator") === "on",
          },
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
  $("error-close").addEventListener("click", clearError);
  wireTasks();
  wireInbox();
  // Escape closes the snooze or reschedule menu that has focus, else the inbox.
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    const menu = document.activeElement?.closest("details[open]");
    if (menu) {
      menu.open = false;
      menu.querySelector("summary").focus();
    } else {
      closeInbox();
    }
  });
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
