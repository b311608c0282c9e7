// The notification stream: one EventSource, its own reconnects, and ours once it has given up.
//
// A network error makes EventSource reconnect by itself, sending Last-Event-ID so that the server replays
// what fired meanwhile. Any non-200 answer (a 401 once the session is gone, a 429, a proxy's 502) closes it
// for good: then this module retries with backoff, after asking whether the session still exists.

const PATH = "/v1/notifications/stream";
const MAX_BACKOFF_SECONDS = 30;

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

export class NotificationStream {
  // handlers: state(name, seconds?), notification(data), read(data), task(data), resync(), expired(),
  // check() -> bool
  constructor(handlers) {
    this.handlers = handlers;
    this.source = null;
    this.timer = null;
    this.failures = 0;
    this.lastId = null;
    this.opened = false;
  }

  // lastId: the newest notification the page shows (0 if none): the server replays what came after it,
  // so nothing that fired between the page's fetch and the stream's start is missed. null: from now on.
  start(lastId) {
    this.stop();
    this.lastId = lastId;
    this.opened = false;
    this.open();
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.source) this.source.close();
    this.source = null;
  }

  open() {
    const url = this.lastId === null ? PATH : `${PATH}?last_event_id=${encodeURIComponent(this.lastId)}`;
    const source = new EventSource(url);
    this.source = source;
    this.handlers.state(this.opened ? "reconnecting" : "connecting");
    source.onopen = () => {
      this.failures = 0;
      this.handlers.state("live");
      // Read-state and task events are not replayed: after any gap, read the inbox and the list again.
      if (this.opened) this.handlers.resync();
      this.opened = true;
    };
    source.onerror = () => {
      if (source !== this.source) return;
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        this.source = null;
        this.retry();
      } else {
        this.handlers.state("reconnecting");
      }
    };
    source.addEventListener("notification", (event) => {
      const data = parse(event.data);
      if (!data) return;
      const id = Number(event.lastEventId || data.id);
      if (this.lastId === null || id > this.lastId) this.lastId = id;
      this.handlers.notification(data);
    });
    // Our Last-Event-ID was above every notification of ours (another database's): the stream starts from
    // the newest one instead, and what the page shows may lack something.
    source.addEventListener("resync", (event) => {
      this.lastId = Number(event.lastEventId);
      this.handlers.resync();
    });
    source.addEventListener("notification.read", (event) => {
      const data = parse(event.data);
      if (data) this.handlers.read(data);
    });
    // A task of ours was created or changed, here or anywhere (another tab, a colleague, a service's
    // signal): the task as the API shows it. Not replayed: after a gap, resync() reads the list again.
    source.addEventListener("task.changed", (event) => {
      const data = parse(event.data);
      if (data) this.handlers.task(data);
    });
    source.addEventListener("session.expired", () => {
      this.stop();
      this.handlers.expired();
    });
  }

  retry() {
    this.failures += 1;
    const base = Math.min(MAX_BACKOFF_SECONDS, 2 ** (this.failures - 1));
    // Half to one and a half times: the pages a dead web process served come back spread out.
    const seconds = base * (0.5 + Math.random());
    this.handlers.state("offline", Math.ceil(seconds));
    this.timer = setTimeout(async () => {
      this.timer = null;
      let signedIn;
      try {
        signedIn = await this.handlers.check();
      } catch {
        this.retry();
        return;
      }
      if (signedIn) this.open();
      else this.handlers.expired();
    }, seconds * 1000);
  }
}
