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
import { SharedStream } from "./shared-stream.js";
import { applyTask, clearTasks, focusTask, loadTasks, showTasks, wireTasks } from "./tasks.js";
import { formatTime } from "./time.js";
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

// One stream for all the tabs of the page (shared-stream.js): this tab leads it or follows the one that does.
const stream = new SharedStream({
  state: showLive,
  notification: onNotification,
  read: applyRead,
  task: applyTask,
  resync: () => Promise.all([loadInbox(), refreshUnread(), loadTasks()]).catch(failed),
  message: onTabMessage,
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
  if (stream.leading) desktopAlert(item);
  soon(refreshUnread);
  // A task that fired shows overdue by the page's clock; a recurring one moves on with its own
  // `task.changed`.
}

// -- desktop notifications --------------------------------------------------------------------------
//
// Opt-in, per browser (localStorage). A reminder that fires while no tab of the page is visible raises one
// system notification: the leading tab raises it, knowing which tabs are visible from what they post on
// the shared stream's channel; its click brings the page forward on that task.

const DESKTOP_KEY = "tickler.desktop-alerts";
// A replay after a long reconnect brings old reminders: those do not pop up on the desktop.
const DESKTOP_RECENT_MS = 5 * 60_000;
const tab = crypto.randomUUID();
// The other tabs that said they are visible (what the leader needs).
const visibleTabs = new Set();

const seen = () => document.visibilityState === "visible";
const desktopSupported = () => "Notification" in window;
const desktopOn = () =>
  desktopSupported() && Notification.permission === "granted" && localStorage.getItem(DESKTOP_KEY) === "on";

function tellVisibility(visible = seen()) {
  stream.post("visibility", { tab, visible });
}

function onTabMessage(type, data) {
  if (type === "hello") tellVisibility();
  else if (type === "visibility" && data && typeof data.tab === "string") {
    if (data.visible) visibleTabs.add(data.tab);
    else visibleTabs.delete(data.tab);
  }
}

function desktopAlert(item) {
  if (!desktopOn() || item.read_at || seen() || visibleTabs.size > 0) return;
  if (Date.now() - Date.parse(item.created_at) > DESKTOP_RECENT_MS) return;
  const alert = new Notification(`Reminder: ${item.title}`, {
    body: `Due ${formatTime(new Date(item.due_at))}`,
    tag: `tickler-${item.id}`,
  });
  alert.onclick = () => {
    window.focus();
    focusTask(item.task_id);
    alert.close();
  };
}

function showDesktop() {
  const button = $("desktop");
  button.hidden = !desktopSupported();
  if (button.hidden) return;
  const blocked = Notification.permission === "denied";
  const on = desktopOn();
  button.setAttribute("aria-pressed", String(on));
  button.disabled = blocked;
  button.textContent = blocked ? "Desktop alerts blocked" : on ? "Desktop alerts on" : "Desktop alerts off";
  button.title = blocked
    ? "The browser blocks notifications for this site: allow them in its site settings."
    : "Show a system notification when a reminder fires while no tab of Tickler is visible.";
}

async function toggleDesktop() {
  if (desktopOn()) {
    localStorage.setItem(DESKTOP_KEY, "off");
  } else {
    const permission = await Notification.requestPermission();
    localStorage.setItem(DESKTOP_KEY, permission === "granted" ? "on" : "off");
  }
  showDesktop();
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
  stream.start(me, inboxLoaded ? newestNotificationId() : null);
  tellVisibility();
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
  showDesktop();
  $("desktop").addEventListener("click", () => toggleDesktop().catch(failed));
  document.addEventListener("visibilitychange", () => tellVisibility());
  window.addEventListener("pagehide", () => tellVisibility(false));
  // Another tab turned desktop alerts on or off.
  window.addEventListener("storage", (event) => {
    if (event.key === DESKTOP_KEY) showDesktop();
  });
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
