// One stream per browser, however many tabs of the page are open.
//
// The tabs of one user take a Web Lock named after them; the tab that holds it leads: it opens the
// EventSource (stream.js) and passes every event to the other tabs over a BroadcastChannel of the same
// name. The browser releases the lock when the leading tab closes, crashes or signs out, and the next tab
// waiting for it takes over at once: it opens the stream from the newest notification id any tab has seen,
// so the server replays what fired in between and nothing is missed. Over HTTP/1.1 a browser holds six
// connections per site: one stream, not one per tab, leaves the others to the API.
//
// Why locks and a channel rather than a SharedWorker: the lock's release on a tab's end needs no
// heartbeat nor timeout, each tab keeps its own page code (no second context to debug), and both work
// where a SharedWorker does not (Chrome on Android). Without Web Locks each tab leads on its own.

import { NotificationStream } from "./stream.js";

const RELAYED = ["notification", "read", "task", "resync", "expired"];

export class SharedStream {
  // handlers: those of NotificationStream (stream.js), and message(type, data) for what else the tabs
  // post to each other.
  constructor(handlers) {
    this.handlers = handlers;
    this.channel = null;
    this.stream = null;
    this.abort = null;
    this.release = null;
    this.lastId = null;
    this.state = ["connecting"];
  }

  get leading() {
    return this.stream !== null;
  }

  // me: the session (whose stream); lastId: the newest notification this tab shows (null: from now on).
  start(me, lastId) {
    this.stop();
    this.lastId = lastId;
    const name = `tickler-stream:${me.organization_id}:${me.user_id}`;
    this.channel = new BroadcastChannel(name);
    this.channel.onmessage = (event) => this.receive(event.data);
    this.show("connecting");
    if (!navigator.locks) {
      this.lead();
      return;
    }
    const abort = new AbortController();
    this.abort = abort;
    navigator.locks
      .request(name, { signal: abort.signal }, () => {
        if (abort.signal.aborted) return null;
        return new Promise((resolve) => {
          this.release = resolve;
          this.lead();
        });
      })
      .catch(() => {}); // aborted: this tab stopped before it led
    // Ask the leader, if there is one, how its stream is.
    this.post("hello");
  }

  stop() {
    if (this.stream) this.stream.stop();
    this.stream = null;
    if (this.abort) this.abort.abort();
    this.abort = null;
    if (this.release) this.release();
    this.release = null;
    if (this.channel) this.channel.close();
    this.channel = null;
  }

  // -- leading ---------------------------------------------------------------------------------------

  lead() {
    const relay = (type) => (data) => {
      if (type === "notification") this.seen(data.id);
      this.handlers[type](data);
      this.post(type, data);
    };
    const handlers = Object.fromEntries(RELAYED.map((type) => [type, relay(type)]));
    this.stream = new NotificationStream({
      ...handlers,
      state: (name, seconds) => {
        this.show(name, seconds);
        this.post("state", this.state);
      },
      check: this.handlers.check,
    });
    this.stream.start(this.lastId);
    // A new leader: the other tabs say again what the leader needs to know (e.g. whether they are seen).
    this.post("hello");
  }

  // -- following -------------------------------------------------------------------------------------

  receive(message) {
    if (!message || typeof message.type !== "string") return;
    if (message.type === "hello") {
      if (this.leading) this.post("state", this.state);
      this.handlers.message?.("hello");
    } else if (message.type === "state") {
      if (!this.leading) this.show(...message.data);
    } else if (RELAYED.includes(message.type)) {
      if (message.type === "notification") this.seen(message.data.id);
      this.handlers[message.type](message.data);
    } else {
      this.handlers.message?.(message.type, message.data);
    }
  }

  // -- both ------------------------------------------------------------------------------------------

  // Other messages between the tabs (e.g. which of them are visible), through the same channel.
  post(type, data) {
    if (this.channel) this.channel.postMessage({ type, data });
  }

  seen(id) {
    const n = Number(id);
    if (Number.isFinite(n) && (this.lastId === null || n > this.lastId)) this.lastId = n;
  }

  show(name, seconds) {
    this.state = [name, seconds];
    this.handlers.state(name, seconds);
  }
}
