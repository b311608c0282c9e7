// The design Tickler replaces, built only to benchmark against: BullMQ delayed jobs (jobId = task id),
// a worker that writes the same notification row as Tickler's delivery activity (same table, same
// INSERT ... ON CONFLICT DO NOTHING, same per-user lock) and publishes it on Redis, and a small SSE server
// that fans Redis messages out to each user's streams.
//
//   node server.js web      POST /v1/tasks (row + delayed job), GET /v1/notifications/stream, GET /healthz
//   node server.js worker   the BullMQ worker, concurrency BENCH_CONCURRENCY (50)
//
// Settings come from the environment (bench/baseline.py sets them): BENCH_DATABASE_URL, BENCH_REDIS_URL,
// BENCH_PORT, BENCH_JWT_SECRET, BENCH_CHANNEL, BENCH_QUEUE, BENCH_CONCURRENCY, BENCH_POOL_SIZE.
"use strict";

const crypto = require("node:crypto");
const http = require("node:http");
const { Queue, Worker, UnrecoverableError } = require("bullmq");
const IORedis = require("ioredis");
const { Pool } = require("pg");

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};

const DATABASE_URL = env("BENCH_DATABASE_URL");
// The newest of TICKLER_ORGANIZATION_KEYS: row-level security reads an organization only with its
// HMAC-SHA256 under a key the database holds (core/db.py, docs/decisions.md §26).
const ORGANIZATION_KEY = env("BENCH_ORGANIZATION_KEY");
const REDIS_URL = env("BENCH_REDIS_URL");
const JWT_SECRET = env("BENCH_JWT_SECRET");
const CHANNEL = env("BENCH_CHANNEL", "bench:baseline:notifications");
const QUEUE = env("BENCH_QUEUE", "bench-reminders");
const POOL_SIZE = Number(env("BENCH_POOL_SIZE", "20"));
const HEARTBEAT_MS = 15000;

function redisConnection() {
  const url = new URL(REDIS_URL);
  // BullMQ's blocking commands need maxRetriesPerRequest: null.
  return { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
}

// -- auth: HS256 bearer tokens, as core/auth.py mints them --------------------------------------------

function verify(header) {
  const match = /^Bearer\s+(\S+)$/i.exec(header || "");
  if (!match) return null;
  const [head, body, signature] = match[1].split(".");
  if (!signature) return null;
  const expected = crypto.createHmac("sha256", JWT_SECRET).update(`${head}.${body}`).digest("base64url");
  const a = Buffer.from(signature);
  const b = Buffer.from(expected);
  if (a.length !== b.length || !crypto.timingSafeEqual(a, b)) return null;
  const header_ = JSON.parse(Buffer.from(head, "base64url").toString());
  if (header_.alg !== "HS256") return null;
  const claims = JSON.parse(Buffer.from(body, "base64url").toString());
  if (typeof claims.exp !== "number" || claims.exp * 1000 < Date.now() || claims.org === undefined) {
    return null;
  }
  return { user: String(claims.sub), org: String(claims.org) };
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => resolve(Buffer.concat(chunks).toString()));
    req.on("error", reject);
  });
}

// As core/db.py's tenant_transaction: row-level security sees only the transaction's organization.
function enter(client, org) {
  const signature = crypto.createHmac("sha256", ORGANIZATION_KEY).update(org).digest("hex");
  return client.query(
    "SELECT set_config('tickler.organization_id', $1, true), set_config('tickler.organization_sig', $2, true)",
    [org, signature],
  );
}

async function inTenant(pool, org, work) {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    await enter(client, org);
    const result = await work(client);
    await client.query("COMMIT");
    return result;
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {});
    throw error;
  } finally {
    client.release();
  }
}

// -- web --------------------------------------------------------------------------------------------

async function web() {
  const pool = new Pool({ connectionString: DATABASE_URL, max: POOL_SIZE, application_name: "baseline-web" });
  const queue = new Queue(QUEUE, { connection: redisConnection() });
  const subscriber = new IORedis(redisConnection());
  const streams = new Map(); // "org\0user" -> Set of responses

  subscriber.on("message", (_channel, raw) => {
    const event = JSON.parse(raw);
    const targets = streams.get(`${event.organization_id}\0${event.user_id}`);
    if (!targets) return;
    const frame = `event: ${event.event}\nid: ${event.id}\ndata: ${JSON.stringify(event.data)}\n\n`;
    for (const res of targets) res.write(frame);
  });
  await subscriber.subscribe(CHANNEL);

  async function createTask(req, res, who) {
    let body;
    try {
      body = JSON.parse(await readBody(req));
    } catch {
      return send(res, 422, { detail: "the body is not JSON" });
    }
    const due = new Date(body.due_at);
    if (!body.title || Number.isNaN(due.getTime())) {
      return send(res, 422, { detail: "title and due_at are required" });
    }
    const id = crypto.randomUUID();
    const now = new Date();
    await inTenant(pool, who.org, (client) =>
      client.query(
        `INSERT INTO tasks (id, organization_id, assignee_id, created_by, title, due_at, status,
                            reminder_offsets, timezone, version, created_at, updated_at)
         VALUES ($1, $2, $3, $3, $4, $5, 'open', '{0}', 'UTC', 1, $6, $6)`,
        [id, who.org, body.assignee_id || who.user, body.title, due, now],
      ),
    );
    await queue.add(
      "reminder",
      { task_id: id, organization_id: who.org, due_at: due.toISOString() },
      {
        jobId: id,
        delay: Math.max(0, due.getTime() - Date.now()),
        attempts: 5,
        backoff: { type: "exponential", delay: 1000 },
        removeOnComplete: true,
        removeOnFail: 1000,
      },
    );
    send(res, 201, { id, title: body.title, due_at: due.toISOString(), status: "open" });
  }

  function stream(req, res, who) {
    const key = `${who.org}\0${who.user}`;
    res.writeHead(200, {
      "Content-Type": "text/event-stream; charset=utf-8",
      "Cache-Control": "no-cache",
      "X-Accel-Buffering": "no",
    });
    res.write("retry: 2000\n\n");
    let targets = streams.get(key);
    if (!targets) streams.set(key, (targets = new Set()));
    targets.add(res);
    const heartbeat = setInterval(() => res.write(": heartbeat\n\n"), HEARTBEAT_MS);
    req.on("close", () => {
      clearInterval(heartbeat);
      targets.delete(res);
      if (targets.size === 0) streams.delete(key);
    });
  }

  const server = http.createServer(async (req, res) => {
    try {
      const path = req.url.split("?")[0];
      if (path === "/healthz") return send(res, 200, { status: "ok" });
      const who = verify(req.headers.authorization);
      if (!who) return send(res, 401, { detail: "send a valid bearer token" });
      if (req.method === "POST" && path === "/v1/tasks") return await createTask(req, res, who);
      if (req.method === "GET" && path === "/v1/notifications/stream") return stream(req, res, who);
      send(res, 404, { detail: "no such route" });
    } catch (error) {
      console.error(error);
      if (!res.headersSent) send(res, 500, { detail: "internal error" });
    }
  });
  server.keepAliveTimeout = 65000;
  server.requestTimeout = 0; // streams live until the client goes
  server.maxConnections = 0x7fffffff;
  server.listen(Number(env("BENCH_PORT")), "127.0.0.1");

  const stop = async () => {
    server.close();
    for (const targets of streams.values()) for (const res of targets) res.end();
    await Promise.allSettled([queue.close(), subscriber.quit(), pool.end()]);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

// -- worker -----------------------------------------------------------------------------------------

async function worker() {
  const pool = new Pool({
    connectionString: DATABASE_URL,
    max: POOL_SIZE,
    application_name: "baseline-worker",
  });
  const publisher = new IORedis(redisConnection());

  async function deliver(job) {
    const { task_id: taskId, organization_id: org } = job.data;
    const dedupeKey = `${taskId}/1/0`;
    const client = await pool.connect();
    let row;
    try {
      await client.query("BEGIN");
      await enter(client, org);
      const task = await client.query(
        "SELECT assignee_id, title, due_at, status FROM tasks WHERE id = $1 AND organization_id = $2",
        [taskId, org],
      );
      if (task.rowCount === 0) throw new UnrecoverableError(`task ${taskId} does not exist`);
      const { assignee_id: user, title, due_at: due, status } = task.rows[0];
      if (status !== "open") {
        await client.query("COMMIT");
        return null;
      }
      // As activities/tasks.py: one user's ids commit in id order.
      await client.query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", [`${org}/${user}`]);
      const inserted = await client.query(
        `INSERT INTO notifications (organization_id, user_id, task_id, dedupe_key, payload, due_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (dedupe_key) DO NOTHING
         RETURNING id, task_id, kind, payload, due_at, created_at, read_at, organization_id, user_id`,
        [org, user, taskId, dedupeKey, { title, offset_seconds: 0 }, due],
      );
      row = inserted.rows[0];
      if (!row) {
        const existing = await client.query(
          `SELECT id, task_id, kind, payload, due_at, created_at, read_at, organization_id, user_id
             FROM notifications WHERE dedupe_key = $1`,
          [dedupeKey],
        );
        row = existing.rows[0];
      }
      await client.query("COMMIT");
    } catch (error) {
      await client.query("ROLLBACK").catch(() => {});
      throw error;
    } finally {
      client.release();
    }
    await publisher.publish(
      CHANNEL,
      JSON.stringify({
        organization_id: row.organization_id,
        user_id: row.user_id,
        event: "notification",
        id: Number(row.id),
        data: {
          id: Number(row.id),
          task_id: row.task_id,
          kind: row.kind,
          ...row.payload,
          due_at: row.due_at.toISOString(),
          created_at: row.created_at.toISOString(),
          read_at: row.read_at ? row.read_at.toISOString() : null,
        },
      }),
    );
    return Number(row.id);
  }

  const w = new Worker(QUEUE, deliver, {
    connection: redisConnection(),
    concurrency: Number(env("BENCH_CONCURRENCY", "50")),
  });
  w.on("failed", (job, error) => console.error(`job ${job && job.id} failed: ${error.message}`));
  const stop = async () => {
    await Promise.allSettled([w.close(), publisher.quit(), pool.end()]);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

const role = process.argv[2];
if (role === "web") web();
else if (role === "worker") worker();
else {
  console.error("usage: node server.js web|worker");
  process.exit(2);
}
