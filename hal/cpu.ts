// What the CPU can do for TLS (issue 17): a Raspberry Pi 4 (Cortex-A72, BCM2711) has no ARMv8
// crypto extensions, so AES-GCM runs in software there and ChaCha20-Poly1305 is the faster TLS
// 1.3 suite; a Pi 5 (Cortex-A76) and x86 machines with AES-NI run AES-GCM in hardware. Linux
// lists the extensions in /proc/cpuinfo: `Features ... aes` on arm64, `flags ... aes` on x86.
import { readFileSync } from 'node:fs';

/** True when /proc/cpuinfo text says every CPU has AES instructions. */
export function cpuinfoHasAes(cpuinfo: string): boolean {
  const lines = cpuinfo.split('\n').filter((l) => /^(Features|flags)\s*:/.test(l));
  return lines.length > 0 && lines.every((l) => /\saes(\s|$)/.test(l.slice(l.indexOf(':') + 1) + ' '));
}

let cached: boolean | undefined;

/** AES instructions on this machine; when /proc/cpuinfo cannot be read, assume yes (the common case). */
export function hasAesInstructions(): boolean {
  if (cached !== undefined) return cached;
  try {
    cached = cpuinfoHasAes(readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    cached = true;
  }
  return cached;
}

/** TLS 1.3 suites, fastest first for a CPU with or without AES instructions. */
export function tls13CipherOrder(aes: boolean = hasAesInstructions()): string {
  const suites = aes
    ? ['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256']
    : ['TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384'];
  return suites.join(':');
}
