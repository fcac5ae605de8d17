// The seed's stack, for bench/run.sh's side-by-side ingest: the original
// Clerk webhook endpoint (one Express process, `svix` Webhook.verify, one
// Mongoose call per event), with each Mongoose call ported to one SQL
// statement on SQLite (the async `sqlite3` driver) or PostgreSQL (a `pg`
// Pool), awaited like the Mongoose calls.
//
// What it keeps from the seed, on purpose, slow parts included:
// - `express.json()` parses the body, and the signature is checked over
//   `JSON.stringify(req.body)` (the seed never sees the raw bytes; for
//   compact JSON without integer-like keys, such as Clerk's and the load
//   generator's, that re-serialization is byte-identical);
// - a new `Webhook(secret)` per request, and the versions the seed's lock
//   file pins: svix 1.42.0 (HMAC in JavaScript, fast-sha256), express 5.1.0;
// - user.created  -> User.create({_id, email, name, imageUrl}): one INSERT
//                    (a second create of the same id fails, as E11000 does);
//   user.updated  -> User.findByIdAndUpdate(id, {email, name, imageUrl}):
//                    one UPDATE by id, nothing when the id is unknown;
//   user.deleted  -> User.findByIdAndDelete(id): one DELETE by id;
//   with email = email_addresses[0].email_address,
//   name = first_name + ' ' + last_name, imageUrl = image_url, and the
//   schema's `timestamps: true` (createdAt on create, updatedAt on both);
// - `res.json({})` for those and for every other type; any error (bad
//   signature, database) is logged and answered 500
//   `{"success":false,"message":"An unexpected error occurred"}`.
// Left out: the seed's app-wide cors/helmet/Clerk auth middleware and rate
// limiters, which only make its requests dearer.
//
// Settings (environment):
//   CLERK_WEBHOOK_SECRET      the endpoint's whsec_… secret (required)
//   DATABASE_URL              sqlite://PATH (SQLite in WAL mode, synchronous
//                             FULL, like clerk-sync's) or postgres://…
//   DATABASE_MAX_CONNECTIONS  PostgreSQL pool size (default 10, pg's own)
//   HOST / PORT               127.0.0.1 / 3000; PORT=0 picks a free port
// Once it listens it prints `seed: listening on http://HOST:PORT/clerk`.
// The `users` table is created if missing.

import express from 'express'
import { Webhook } from 'svix'

const secret = process.env.CLERK_WEBHOOK_SECRET
const databaseUrl = process.env.DATABASE_URL
if (!secret) fail('CLERK_WEBHOOK_SECRET is not set')
if (!databaseUrl) fail('DATABASE_URL is not set')

const store = await openStore(databaseUrl)

const app = express()
app.use(express.json())
app.get('/', (req, res) => res.send('API Working'))
app.post('/clerk', async (req, res) => {
  try {
    const webhook = new Webhook(secret)
    await webhook.verify(JSON.stringify(req.body), {
      'svix-id': req.headers['svix-id'],
      'svix-timestamp': req.headers['svix-timestamp'],
      'svix-signature': req.headers['svix-signature'],
    })
    const { data, type } = req.body
    switch (type) {
      case 'user.created':
        await store.create({
          _id: data.id,
          email: data.email_addresses[0].email_address,
          name: data.first_name + ' ' + data.last_name,
          imageUrl: data.image_url,
        })
        res.json({})
        break
      case 'user.updated':
        await store.findByIdAndUpdate(data.id, {
          email: data.email_addresses[0].email_address,
          name: data.first_name + ' ' + data.last_name,
          imageUrl: data.image_url,
        })
        res.json({})
        break
      case 'user.deleted':
        await store.findByIdAndDelete(data.id)
        res.json({})
        break
      default:
        res.json({})
    }
  } catch (error) {
    console.error(error)
    res.status(500).json({ success: false, message: 'An unexpected error occurred' })
  }
})

const host = process.env.HOST || '127.0.0.1'
const port = Number(process.env.PORT ?? 3000)
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`PORT: expected 0 to 65535, got '${process.env.PORT}'`)
const server = app.listen(port, host, (error) => {
  if (error) fail(`cannot listen on ${host}:${port}: ${error.message}`)
  console.log(`seed: listening on http://${host}:${server.address().port}/clerk`)
})
server.on('error', (error) => fail(`cannot listen on ${host}:${port}: ${error.message}`))

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.once(signal, async () => {
    server.close()
    server.closeAllConnections()
    await store.close()
    process.exit(0)
  })
}

function fail(message) {
  console.error(`seed: ${message}`)
  process.exit(1)
}

// Mongoose's `required: true` on a String path: null, undefined and '' fail
// validation (a ValidationError, so a 500).
function required(doc) {
  for (const path of ['_id', 'name', 'email', 'imageUrl']) {
    if (doc[path] === undefined || doc[path] === null || doc[path] === '') {
      throw new Error(`User validation failed: ${path}: Path \`${path}\` is required.`)
    }
  }
}

async function openStore(url) {
  if (url.startsWith('sqlite:')) return openSqlite(url)
  if (url.startsWith('postgres://') || url.startsWith('postgresql://')) return openPostgres(url)
  fail('DATABASE_URL must start with sqlite: or postgres://')
}

async function openSqlite(url) {
  const { default: sqlite3 } = await import('sqlite3')
  // sqlite://PATH or sqlite:PATH, any ?query (clerk-sync's ?mode=rwc) ignored.
  const path = url.replace(/^sqlite:(\/\/)?/, '').replace(/\?.*$/, '')
  const db = await new Promise((resolve, reject) => {
    const db = new sqlite3.Database(path, (error) => (error ? reject(error) : resolve(db)))
  })
  db.configure('busyTimeout', 5000)
  const exec = (sql) => new Promise((resolve, reject) => db.exec(sql, (error) => (error ? reject(error) : resolve())))
  await exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL')
  await exec(`CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    image_url TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
  )`)
  // Each prepared once; a call runs it on libuv's thread pool, as Mongoose's
  // calls leave the event loop free while the database works.
  const statement = (sql) => {
    const prepared = db.prepare(sql)
    return (...params) =>
      new Promise((resolve, reject) => prepared.run(params, (error) => (error ? reject(error) : resolve())))
  }
  const insert = statement(
    'INSERT INTO users (id, email, name, image_url, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)',
  )
  // Mongoose leaves out update keys whose value is undefined: the field
  // keeps its value (COALESCE). email and name are never undefined here.
  const update = statement(
    'UPDATE users SET email = ?, name = ?, image_url = COALESCE(?, image_url), updated_at = ? WHERE id = ?',
  )
  const remove = statement('DELETE FROM users WHERE id = ?')
  return {
    async create(doc) {
      required(doc)
      const now = Date.now()
      await insert(String(doc._id), String(doc.email), String(doc.name), String(doc.imageUrl), now, now)
    },
    async findByIdAndUpdate(id, fields) {
      await update(fields.email, fields.name, fields.imageUrl ?? null, Date.now(), id)
    },
    async findByIdAndDelete(id) {
      await remove(id)
    },
    async close() {
      await new Promise((resolve) => db.close(resolve))
    },
  }
}

async function openPostgres(url) {
  const { default: pg } = await import('pg')
  const max = Number(process.env.DATABASE_MAX_CONNECTIONS || 10)
  if (!Number.isInteger(max) || max < 1) fail('DATABASE_MAX_CONNECTIONS: expected a positive number')
  const pool = new pg.Pool({ connectionString: url, max })
  pool.on('error', (error) => console.error(error))
  await pool.query(`CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    image_url TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
  )`)
  // Named: each pooled connection prepares a statement once.
  return {
    async create(doc) {
      required(doc)
      const now = new Date()
      await pool.query({
        name: 'user-create',
        text: 'INSERT INTO users (id, email, name, image_url, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)',
        values: [String(doc._id), String(doc.email), String(doc.name), String(doc.imageUrl), now],
      })
    },
    async findByIdAndUpdate(id, fields) {
      await pool.query({
        name: 'user-update',
        text: 'UPDATE users SET email = $1, name = $2, image_url = COALESCE($3, image_url), updated_at = $4 WHERE id = $5',
        values: [fields.email, fields.name, fields.imageUrl ?? null, new Date(), id],
      })
    },
    async findByIdAndDelete(id) {
      await pool.query({ name: 'user-delete', text: 'DELETE FROM users WHERE id = $1', values: [id] })
    },
    async close() {
      await pool.end()
    },
  }
}
