/**
 * Test helpers: a real sync-service (the repository's `clerk-sync-service`
 * binary) on a free port over a temporary SQLite database, optionally with
 * TLS (a CA and a server certificate made with openssl) and bearer tokens.
 *
 * The binary is CLERK_SYNC_SERVICE_BIN, or target/debug/clerk-sync-service
 * of the repository (`cargo build -p clerk-sync-service` first).
 */

import assert from "node:assert/strict";
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { TestContext } from "node:test";

// dist/test/ → clients/typescript/ → the repository.
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");

export const WRITE_TOKEN = "ts-write-token-0123456789abcdef";
export const READ_TOKEN = "ts-read-token-0123456789abcdef";

export function serviceBinary(): string {
  const binary =
    process.env.CLERK_SYNC_SERVICE_BIN ?? join(repoRoot, "target", "debug", "clerk-sync-service");
  if (!existsSync(binary)) {
    throw new Error(
      `no sync-service binary at ${binary}: run \`cargo build -p clerk-sync-service\` ` +
        "in the repository, or set CLERK_SYNC_SERVICE_BIN",
    );
  }
  return binary;
}

/** A directory removed when the test ends. */
export function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "clerk-sync-ts-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function openssl(cwd: string, ...args: string[]): void {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

/** A private CA (`ca.pem`) in `dir`. */
export function makeCa(dir: string): string {
  openssl(dir, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
    "-keyout", "ca-key.pem", "-out", "ca.pem");
  return join(dir, "ca.pem");
}

/** A CA and a server certificate for 127.0.0.1 signed by it, in `dir`. */
export function makeTlsFiles(dir: string): { caFile: string; certFile: string; keyFile: string } {
  const caFile = makeCa(dir);
  openssl(dir, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=sync.test",
    "-keyout", "server-key.pem", "-out", "server.csr");
  writeFileSync(join(dir, "server.ext"), "subjectAltName=IP:127.0.0.1\n");
  openssl(dir, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
    "-CAcreateserial", "-days", "1", "-extfile", "server.ext", "-out", "server.pem");
  return { caFile, certFile: join(dir, "server.pem"), keyFile: join(dir, "server-key.pem") };
}

export interface SyncService {
  /** host:port it listens on. */
  address: string;
  /** The CA of its certificate; undefined without TLS. */
  caFile?: string;
  /** Its log lines so far (JSON), to show when something fails. */
  logs: string[];
  /** Stops it (SIGTERM) and waits for a clean exit. */
  stop(): Promise<void>;
  /** Starts it again, stopped, on the same address and database. */
  restart(): Promise<void>;
}

/**
 * Starts the sync-service for one test and stops it (SIGTERM, expecting a
 * clean exit) when the test ends. `secure`: TLS on the gRPC port, and the
 * WRITE_TOKEN / READ_TOKEN tokens required.
 */
export async function startSyncService(t: TestContext, { secure }: { secure: boolean }): Promise<SyncService> {
  const dir = mkdtempSync(join(tmpdir(), "clerk-sync-ts-"));
  const args: string[] = [];
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    DATABASE_URL: `sqlite://${join(dir, "clerk-sync.db")}?mode=rwc`,
    // Port 0: the system picks a free port; the service logs it.
    SYNC_SERVICE_LISTEN_ADDR: "127.0.0.1:0",
    SYNC_SERVICE_METRICS_LISTEN_ADDR: "",
    LOG_FORMAT: "json",
    RUST_LOG: "info",
  };
  let caFile: string | undefined;
  if (secure) {
    const tls = makeTlsFiles(dir);
    caFile = tls.caFile;
    args.push("--tls-cert", tls.certFile, "--tls-key", tls.keyFile);
    env.SYNC_SERVICE_WRITE_TOKENS = WRITE_TOKEN;
    env.SYNC_SERVICE_READ_TOKENS = READ_TOKEN;
  }
  const logs: string[] = [];
  let running: Running | undefined;
  const stop = async () => {
    if (running === undefined) return;
    const { child, exited } = running;
    running = undefined;
    if (child.exitCode === null) child.kill("SIGTERM");
    const code = await exited;
    if (code !== 0) {
      throw new Error(`sync-service exited with ${code}:\n${logs.join("\n")}`);
    }
  };
  // One hook, so that the database outlives the process.
  t.after(async () => {
    try {
      await stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  running = spawnService(dir, args, env, logs);
  const address = await running.address;
  return {
    address,
    caFile,
    logs,
    stop,
    restart: async () => {
      assert.equal(running, undefined, "restart() a stopped sync-service");
      running = spawnService(dir, args, { ...env, SYNC_SERVICE_LISTEN_ADDR: address }, logs);
      assert.equal(await running.address, address);
    },
  };
}

interface Running {
  child: ChildProcess;
  /** Its exit code. */
  exited: Promise<number | null>;
  /** Where it listens, once it does. */
  address: Promise<string>;
}

function spawnService(dir: string, args: string[], env: NodeJS.ProcessEnv, logs: string[]): Running {
  const child = spawn(serviceBinary(), args, { cwd: dir, env, stdio: ["ignore", "ignore", "pipe"] });
  const exited = new Promise<number | null>((done) => child.once("exit", (code) => done(code)));
  return { child, exited, address: listeningAddress(child, logs) };
}

/** Reads the service's logs (and keeps reading them) until it says where it listens. */
function listeningAddress(child: ChildProcess, logs: string[]): Promise<string> {
  const lines = createInterface({ input: child.stderr! });
  return new Promise((done, fail) => {
    let found = false;
    lines.on("line", (line) => {
      logs.push(line);
      if (found) return;
      let record: { fields?: { message?: string; address?: string } };
      try {
        record = JSON.parse(line);
      } catch {
        return; // not a log record (a panic message, say): kept in logs
      }
      if (record.fields?.message === "sync-service listening" && record.fields.address) {
        found = true;
        done(record.fields.address);
      }
    });
    lines.on("close", () => {
      if (!found) fail(new Error(`sync-service exited before listening:\n${logs.join("\n")}`));
    });
  });
}
