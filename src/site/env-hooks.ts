// Test hooks: shorter link timing for kill -9 tests, read from the environment of a site
// process (GEOMIRROR_HEARTBEAT_MS, GEOMIRROR_LINK_TIMEOUT_MS, GEOMIRROR_MIRROR_LOSS_GRACE_MS).
// One reader for every runtime (replicating sites in roles.ts, the witness).

function envMs(name: string): number | undefined {
  const v = process.env[name];
  return v !== undefined && /^\d+$/.test(v) && Number(v) > 0 ? Number(v) : undefined;
}

export function linkTimingFromEnv(): { heartbeatIntervalMs?: number; linkTimeoutMs?: number } {
  const heartbeatIntervalMs = envMs('GEOMIRROR_HEARTBEAT_MS');
  const linkTimeoutMs = envMs('GEOMIRROR_LINK_TIMEOUT_MS');
  return { ...(heartbeatIntervalMs ? { heartbeatIntervalMs } : {}), ...(linkTimeoutMs ? { linkTimeoutMs } : {}) };
}

export function mirrorLossGraceMsFromEnv(): number | undefined {
  return envMs('GEOMIRROR_MIRROR_LOSS_GRACE_MS');
}
