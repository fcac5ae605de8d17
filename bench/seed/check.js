// The seed's end state after `clerk-sync-bench ingest --run-id RUN --users N
// --updates U` (no deletions, no shuffle): every user n < N of RUN is in the
// seed's `users` table with the last version's fields, as the load
// generator's plan makes them (bench/src/plan.rs): id user_bench_RUN_<n, 6
// digits>, email bench.RUN.<n>@example.org, name "v<U> Example" (first_name
// v<U> + ' ' + the fixture's last_name), the fixture's image_url.
//
//   DATABASE_URL=… node bench/seed/check.js RUN N U
// prints `RESULT seed-verify users=… found=… mismatches=…` (mismatches:
// users missing or not at their last version) and the first few mismatches.

const [run, users, updates] = process.argv.slice(2)
const count = Number(users)
if (!/^[A-Za-z0-9]+$/.test(run ?? '') || !Number.isInteger(count) || count < 1 || !/^[0-9]+$/.test(updates ?? '')) {
  console.error('usage: DATABASE_URL=… node check.js RUN USERS UPDATES')
  process.exit(2)
}
const url = process.env.DATABASE_URL ?? ''
const prefix = `user_bench_${run}_`
const imageUrl = 'https://img.clerk.com/xxxxxx'

let rows
if (url.startsWith('sqlite:')) {
  const { default: sqlite3 } = await import('sqlite3')
  const path = url.replace(/^sqlite:(\/\/)?/, '').replace(/\?.*$/, '')
  const db = await new Promise((resolve, reject) => {
    const db = new sqlite3.Database(path, sqlite3.OPEN_READONLY, (error) => (error ? reject(error) : resolve(db)))
  })
  rows = await new Promise((resolve, reject) =>
    db.all('SELECT id, email, name, image_url FROM users WHERE substr(id, 1, ?) = ?', [prefix.length, prefix], (error, rows) =>
      error ? reject(error) : resolve(rows),
    ),
  )
  await new Promise((resolve) => db.close(resolve))
} else if (url.startsWith('postgres://') || url.startsWith('postgresql://')) {
  const { default: pg } = await import('pg')
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  const result = await client.query(
    'SELECT id, email, name, image_url FROM users WHERE substr(id, 1, $1) = $2',
    [prefix.length, prefix],
  )
  rows = result.rows
  await client.end()
} else {
  console.error('check.js: DATABASE_URL must start with sqlite: or postgres://')
  process.exit(2)
}

const byId = new Map(rows.map((row) => [row.id, row]))
const mismatches = []
for (let n = 0; n < count; n++) {
  const id = prefix + String(n).padStart(6, '0')
  const want = { email: `bench.${run}.${n}@example.org`, name: `v${updates} Example`, image_url: imageUrl }
  const row = byId.get(id)
  if (!row) {
    mismatches.push(`${id}: missing`)
    continue
  }
  for (const [field, value] of Object.entries(want)) {
    if (row[field] !== value) {
      mismatches.push(`${id}: ${field} is ${JSON.stringify(row[field])}, expected ${JSON.stringify(value)}`)
      break
    }
  }
}
console.log(`RESULT seed-verify users=${count} found=${rows.length} mismatches=${mismatches.length}`)
for (const line of mismatches.slice(0, 10)) console.log(`  ${line}`)
