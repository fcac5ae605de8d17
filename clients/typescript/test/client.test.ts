/**
 * The TypeScript client against a real sync-service with TLS and tokens:
 * users applied through UserSyncService (write token) are read back through
 * UserDirectoryService (read token), the change feed is followed through a
 * snapshot and live changes, and errors arrive with their gRPC codes.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  connect,
  Outcome,
  type SyncServiceConnection,
  type UserSchema,
  type WatchUsersResponse,
} from "../src/index.js";
import { READ_TOKEN, WRITE_TOKEN, makeCa, startSyncService, tempDir, type SyncService } from "./sync-service.js";

function user(id: string, email: string, updatedAtMs: number, firstName = "Ada"): MessageInitShape<typeof UserSchema> {
  return {
    id,
    primaryEmailAddress: email,
    // FindUserByEmail matches verified addresses only.
    emailAddresses: [{ address: email, verified: true, primary: true }],
    firstName,
    displayName: `${firstName} Lovelace`,
    createdAt: timestampFromMs(1_700_000_000_000),
    updatedAt: timestampFromMs(updatedAtMs),
  };
}

async function create(client: SyncServiceConnection, eventId: string, init: MessageInitShape<typeof UserSchema>): Promise<Outcome> {
  const { outcome } = await client.userSync.applyUserCreated(
    { event: { meta: { eventId, occurredAt: init.updatedAt }, user: init } },
    { timeoutMs: 10_000 },
  );
  return outcome;
}

/** A writer and a reader connected to `service` over TLS, closed when the test ends. */
function clients(t: { after: (fn: () => void) => void }, service: SyncService) {
  const writer = connect(service.address, { token: WRITE_TOKEN, caFile: service.caFile, timeoutMs: 10_000 });
  const reader = connect(service.address, { token: READ_TOKEN, caFile: service.caFile, timeoutMs: 10_000 });
  t.after(() => {
    writer.close();
    reader.close();
  });
  return { writer, reader };
}

/** The ConnectError `call` fails with; fails the test when it succeeds. */
async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    assert.ok(error instanceof ConnectError, `not a ConnectError: ${error}`);
    return error;
  }
  assert.fail("the call succeeded");
}

/** The next message of a stream, or a failure after 10 s instead of a hung test. */
async function next(stream: AsyncIterator<WatchUsersResponse>): Promise<WatchUsersResponse> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, fail) => {
    timer = setTimeout(() => fail(new Error("no WatchUsers message within 10 s")), 10_000);
  });
  try {
    const result = await Promise.race([stream.next(), timeout]);
    assert.equal(result.done, false, "the stream ended");
    return result.value as WatchUsersResponse;
  } finally {
    clearTimeout(timer);
  }
}

test("a reader gets and finds by email what a writer applied, over TLS", async (t) => {
  const service = await startSyncService(t, { secure: true });
  const { writer, reader } = clients(t, service);

  const ada = user("user_ada", "Ada@Example.ORG", 1_700_000_000_500);
  assert.equal(await create(writer, "msg_ts_1", ada), Outcome.APPLIED);
  assert.equal(await create(writer, "msg_ts_1", ada), Outcome.DUPLICATE);

  const { user: fetched } = await reader.users.getUser({ id: "user_ada" });
  assert.equal(fetched?.id, "user_ada");
  assert.equal(fetched?.displayName, "Ada Lovelace");
  assert.equal(fetched?.primaryEmailAddress, "Ada@Example.ORG");
  assert.deepEqual(fetched?.emailAddresses.map((e) => [e.address, e.verified, e.primary]), [
    ["Ada@Example.ORG", true, true],
  ]);
  assert.equal(fetched?.updatedAt?.seconds, 1_700_000_000n);
  assert.equal(fetched?.updatedAt?.nanos, 500_000_000);

  const { user: found } = await reader.users.findUserByEmail({ emailAddress: "ada@example.org" });
  assert.equal(found?.id, "user_ada");
});

test("ListUsers pages through everyone in (updated_at, id) order", async (t) => {
  const service = await startSyncService(t, { secure: true });
  const { writer, reader } = clients(t, service);
  // Applied newest first: the order of the pages is the directory's, not ours.
  for (const index of [4, 3, 2, 1, 0]) {
    const created = await create(writer, `msg_list_${index}`, user(`user_${index}`, `u${index}@example.org`, 1_700_000_001_000 + index));
    assert.equal(created, Outcome.APPLIED);
  }

  const pages: string[][] = [];
  let pageToken = "";
  do {
    const page = await reader.users.listUsers({ pageSize: 2, pageToken });
    pages.push(page.users.map((u) => u.id));
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  assert.deepEqual(pages, [["user_0", "user_1"], ["user_2", "user_3"], ["user_4"]]);

  const since = await reader.users.listUsers({ changedSince: timestampFromMs(1_700_000_001_003) });
  assert.deepEqual(since.users.map((u) => u.id), ["user_3", "user_4"]);
  assert.equal(since.nextPageToken, "");
});

test("WatchUsers sends a snapshot, caught_up, then live changes; a resumed stream starts after its position", async (t) => {
  const service = await startSyncService(t, { secure: true });
  const { writer, reader } = clients(t, service);
  await create(writer, "msg_watch_1", user("user_ada", "ada@example.org", 1_700_000_002_000));
  await create(writer, "msg_watch_2", user("user_grace", "grace@example.org", 1_700_000_002_001, "Grace"));

  const abort = new AbortController();
  t.after(() => abort.abort());
  // No deadline on a stream that runs until the client stops reading.
  const feed = reader.users
    .watchUsers({ start: { case: "snapshot", value: {} } }, { signal: abort.signal, timeoutMs: 0 })
    [Symbol.asyncIterator]();

  const snapshot: string[] = [];
  let last = 0n;
  let message = await next(feed);
  while (message.event.case === "user") {
    snapshot.push(message.event.value.id);
    assert.ok(message.position >= last, "positions never decrease");
    last = message.position;
    message = await next(feed);
  }
  assert.deepEqual(snapshot.sort(), ["user_ada", "user_grace"]);
  assert.equal(message.event.case, "caughtUp");
  const caughtUpAt = message.position;
  assert.ok(caughtUpAt >= last);

  // A live change: Ada renamed, newer updated_at.
  const renamed = user("user_ada", "ada@example.org", 1_700_000_003_000, "Augusta");
  const { outcome: updated } = await writer.userSync.applyUserUpdated({
    event: { meta: { eventId: "msg_watch_3", occurredAt: renamed.updatedAt }, user: renamed },
  });
  assert.equal(updated, Outcome.APPLIED);
  const change = await next(feed);
  assert.equal(change.event.case, "user");
  assert.equal(change.event.value.id, "user_ada");
  assert.equal(change.event.value.firstName, "Augusta");
  assert.ok(change.position > caughtUpAt, `live change at ${change.position}, caught up at ${caughtUpAt}`);

  // And a live deletion.
  const { outcome: deleted } = await writer.userSync.applyUserDeleted({
    event: { meta: { eventId: "msg_watch_4", occurredAt: timestampFromMs(1_700_000_004_000) }, userId: "user_grace" },
  });
  assert.equal(deleted, Outcome.APPLIED);
  const deletion = await next(feed);
  assert.equal(deletion.event.case, "deleted");
  assert.equal(deletion.event.value.id, "user_grace");
  assert.ok(deletion.position > change.position);
  abort.abort();

  // Resuming after the snapshot's caught_up: the two changes, then caught_up.
  const resumed = reader.users
    .watchUsers({ start: { case: "afterPosition", value: caughtUpAt } }, { timeoutMs: 0, signal: AbortSignal.timeout(10_000) })
    [Symbol.asyncIterator]();
  const again = [await next(resumed), await next(resumed), await next(resumed)];
  assert.deepEqual(
    again.map((m) => [m.event.case, m.position]),
    [["user", change.position], ["deleted", deletion.position], ["caughtUp", deletion.position]],
  );
  await resumed.return?.();
});

test("errors carry their gRPC codes", async (t) => {
  const service = await startSyncService(t, { secure: true });
  const { writer, reader } = clients(t, service);
  await create(writer, "msg_err_1", user("user_ada", "ada@example.org", 1_700_000_005_000));

  const missing = await failure(reader.users.getUser({ id: "user_nobody" }));
  assert.equal(missing.code, Code.NotFound);
  const noAddress = await failure(reader.users.findUserByEmail({ emailAddress: "nobody@example.org" }));
  assert.equal(noAddress.code, Code.NotFound);
  const noOrganization = await failure(reader.organizations.getOrganization({ id: "org_nobody" }));
  assert.equal(noOrganization.code, Code.NotFound);

  // INVALID_ARGUMENT names the field.
  const tooMany = await failure(reader.users.listUsers({ pageSize: 5000 }));
  assert.equal(tooMany.code, Code.InvalidArgument);
  assert.match(tooMany.rawMessage, /^page_size\b/);
  const negative = await failure(reader.users.listUsers({ pageSize: -1 }));
  assert.equal(negative.code, Code.InvalidArgument);
  assert.match(negative.rawMessage, /^page_size\b/);

  // A read token may read but not write.
  const refused = await failure(create(reader, "msg_err_2", user("user_eve", "eve@example.org", 1_700_000_005_001)));
  assert.equal(refused.code, Code.PermissionDenied);
  await failure(reader.users.getUser({ id: "user_eve" })).then((e) => assert.equal(e.code, Code.NotFound));

  // A wrong token, and none at all, are UNAUTHENTICATED, streams included.
  for (const token of ["not-a-token", undefined]) {
    const stranger = connect(service.address, { token, caFile: service.caFile, timeoutMs: 10_000 });
    t.after(() => stranger.close());
    const unauthenticated = await failure(stranger.users.getUser({ id: "user_ada" }));
    assert.equal(unauthenticated.code, Code.Unauthenticated, `token ${token}`);
    const stream = stranger.users.watchUsers({ start: { case: "now", value: {} } })[Symbol.asyncIterator]();
    const streamRefused = await failure(stream.next());
    assert.equal(streamRefused.code, Code.Unauthenticated, `token ${token}`);
  }
});

test("TLS checks the server's certificate against caFile", async (t) => {
  const service = await startSyncService(t, { secure: true });
  const otherCa = makeCa(tempDir(t));
  const misled = connect(service.address, { token: READ_TOKEN, caFile: otherCa, timeoutMs: 10_000 });
  t.after(() => misled.close());
  const untrusted = await failure(misled.users.getUser({ id: "user_ada" }));
  // Connect-ES reports a failed handshake as INTERNAL, with Node's TLS error as the cause.
  assert.equal(untrusted.code, Code.Internal);
  assert.equal((untrusted.cause as NodeJS.ErrnoException | undefined)?.code, "UNABLE_TO_VERIFY_LEAF_SIGNATURE");
});

test("without caFile or token: plaintext to a loopback sync-service without tokens", async (t) => {
  const service = await startSyncService(t, { secure: false });
  const client = connect(service.address, { timeoutMs: 10_000 });
  t.after(() => client.close());
  assert.equal(await create(client, "msg_plain_1", user("user_ada", "ada@example.org", 1_700_000_006_000)), Outcome.APPLIED);
  const { users, missingIds } = await client.users.batchGetUsers({ ids: ["user_ada", "user_nobody"] });
  assert.deepEqual(users.map((u) => u.id), ["user_ada"]);
  assert.deepEqual(missingIds, ["user_nobody"]);
});

test("connect takes host:port, not a URL", () => {
  assert.throws(() => connect("https://127.0.0.1:50051"), /host:port/);
});

test("a sync-service restart: a stream ends UNAVAILABLE and resumes, an idle connection reconnects", async (t) => {
  const service = await startSyncService(t, { secure: true });
  const { writer, reader } = clients(t, service);
  assert.equal(await create(writer, "msg_restart_1", user("user_ada", "ada@example.org", 1_700_000_007_000)), Outcome.APPLIED);
  // These connections go idle after a call; the watcher keeps a stream open.
  assert.equal((await reader.users.getUser({ id: "user_ada" })).user?.id, "user_ada");
  const leaving = connect(service.address, { token: READ_TOKEN, caFile: service.caFile });
  assert.equal((await leaving.users.getUser({ id: "user_ada" })).user?.id, "user_ada");
  const watcher = connect(service.address, { token: READ_TOKEN, caFile: service.caFile });
  t.after(() => watcher.close());
  const feed = watcher.users.watchUsers({ start: { case: "now", value: {} } })[Symbol.asyncIterator]();
  const caughtUp = await next(feed);
  assert.equal(caughtUp.event.case, "caughtUp");

  // The server's GOAWAY on shutdown: the stream ends UNAVAILABLE, and the
  // idle connection's teardown must not surface as an uncaught exception
  // (which node:test would pin on this test).
  await service.stop();
  // Closed right after the server's GOAWAY (a process shutting down with
  // the sync-service): the connection's late teardown error must go nowhere.
  leaving.close();
  // A call right away finds the connection torn down and fails to reconnect.
  const down = await failure(reader.users.getUser({ id: "user_ada" }));
  assert.equal(down.code, Code.Unavailable, down.message);
  const ended = await failure(feed.next());
  assert.equal(ended.code, Code.Unavailable, ended.message);
  await new Promise((done) => setTimeout(done, 500));

  await service.restart();
  assert.equal((await reader.users.getUser({ id: "user_ada" })).user?.id, "user_ada");
  const resumed = watcher.users
    .watchUsers({ start: { case: "afterPosition", value: caughtUp.position } }, { signal: AbortSignal.timeout(10_000) })
    [Symbol.asyncIterator]();
  const renamed = user("user_ada", "ada@example.org", 1_700_000_008_000, "Augusta");
  const first = await next(resumed);
  assert.equal(first.event.case, "caughtUp");
  await writer.userSync.applyUserUpdated({ event: { meta: { eventId: "msg_restart_2", occurredAt: renamed.updatedAt }, user: renamed } });
  const change = await next(resumed);
  assert.equal(change.event.case, "user");
  assert.equal(change.event.value.firstName, "Augusta");
  await resumed.return?.();
});
