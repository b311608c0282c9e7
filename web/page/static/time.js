// Times on the page: shown in the browser's time zone, sent as RFC 3339 with the browser's offset.

const pad = (n, width = 2) => String(Math.trunc(Math.abs(n))).padStart(width, "0");

export const timeZone = Intl.DateTimeFormat().resolvedOptions().timeZone;

const sameYear = new Intl.DateTimeFormat(undefined, {
  weekday: "short", day: "numeric", month: "short", hour: "numeric", minute: "2-digit",
});
const otherYear = new Intl.DateTimeFormat(undefined, {
  day: "numeric", month: "short", year: "numeric", hour: "numeric", minute: "2-digit",
});
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

export function formatTime(date) {
  return (date.getFullYear() === new Date().getFullYear() ? sameYear : otherYear).format(date);
}

const UNITS = [["day", 86400], ["hour", 3600], ["minute", 60]];

export function formatRelative(date, now = new Date()) {
  const seconds = (date.getTime() - now.getTime()) / 1000;
  // Within a minute is "now": the page renders again every half minute, not every second.
  if (Math.abs(seconds) < 60) return relative.format(0, "second");
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size || unit === "minute") {
      return relative.format(Math.round(seconds / size), unit);
    }
  }
  return "";
}

// "2026-12-01T10:00:05+01:00": the local wall time and the offset in force at that moment.
export function toRfc3339(date) {
  const offset = -date.getTimezoneOffset();
  const sign = offset >= 0 ? "+" : "-";
  return (
    `${pad(date.getFullYear(), 4)}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}` +
    `${sign}${pad(offset / 60)}:${pad(offset % 60)}`
  );
}

// The value a datetime-local input shows for a time, in local wall time.
export function toLocalInput(date) {
  return (
    `${pad(date.getFullYear(), 4)}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
  );
}

// A datetime-local value ("2026-12-01T10:00" or with seconds) is local wall time: Date parses it so.
export function fromLocalInput(value) {
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}
