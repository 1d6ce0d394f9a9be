// Scenario scripts for the pure core, read from test/core/testdata/*.txt (etcd raft's
// `testdata` style): each case is a command, a line `----`, and the actions the core must answer
// with, one per line (logs left out), cases separated by a blank line; `#` starts a comment.
// `UPDATE_SCENARIOS=1 npx vitest run test/core/scenarios.test.ts` rewrites the expected output
// from what the core does now (then read the diff before committing it).
//
// Commands:
//   primary mirrors=A,B [policy=block|degrade] [standby=A]   a primary named local, started (epoch 1)
//   mirror                                                   a mirror named east, started
//   relay downstream=N [ack=cached|end-to-end] [storage=true|false]   a relay named r1, started
//   peerUp P | peerDown P | tick MS | heard P eE sN
//   hostWrite #ID @OFF+LEN [fua] | hostFlush #ID
//   recv P MSG, where MSG is one of: epoch E | resyncRequest eE sN | ack eE sN | write eE sN @OFF+LEN [fua]
//     | flush eE #ID upto sN | flushAck eE #ID | resyncData eE #ID @OFF+LEN | resyncAck eE #ID | inSync eE sN
//     | writeStatus eE sN MESSAGE
//   done PREFIX [fail MESSAGE]   completes the oldest open I/O action whose line starts with PREFIX
//   status                       the role's status, as one JSON line (bigints as numbers)
//   open                         the I/O actions issued and not completed, one per line

import { readFileSync } from 'node:fs';
import { Mirror } from '../../src/core/mirror.js';
import { Primary } from '../../src/core/primary.js';
import { Relay } from '../../src/core/relay.js';
import { senseOf, type CoreEvent, type PeerMsg, type Role } from '../../src/core/types.js';
import { blockBytes, Script, testLimits } from './harness.js';

export interface Case {
  readonly line: number;
  readonly command: string;
  readonly expected: string[];
}

export function parseScenario(text: string): Case[] {
  const cases: Case[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!.trim();
    if (l === '' || l.startsWith('#')) continue;
    const start = i + 1;
    const command = l;
    if (lines[i + 1]?.trim() !== '----') throw new Error(`line ${start}: "${command}" is not followed by ----`);
    i += 2;
    const expected: string[] = [];
    for (; i < lines.length && lines[i]!.trim() !== ''; i++) expected.push(lines[i]!.trim());
    cases.push({ line: start, command, expected });
  }
  return cases;
}

export function renderScenario(header: string, results: { command: string; output: string[] }[]): string {
  return `${header}${results.map((r) => `${r.command}\n----\n${r.output.join('\n')}${r.output.length > 0 ? '\n' : ''}`).join('\n')}`;
}

/** The comment lines at the top of a scenario file (kept as they are when rewriting). */
export function headerOf(text: string): string {
  const out: string[] = [];
  for (const l of text.split('\n')) {
    if (l.startsWith('#') || l.trim() === '') out.push(l);
    else break;
  }
  return out.length > 0 ? `${out.join('\n').replace(/\n+$/, '')}\n\n` : '';
}

function opts(args: string[]): Record<string, string> {
  return Object.fromEntries(args.map((a) => a.split('=') as [string, string]));
}

const num = (s: string, prefix: string): bigint => {
  if (!s.startsWith(prefix)) throw new Error(`expected ${prefix}N, got ${s}`);
  return BigInt(s.slice(prefix.length));
};

function range(s: string): { offsetBytes: number; lengthBytes: number } {
  const m = /^@(\d+)\+(\d+)$/.exec(s);
  if (!m) throw new Error(`expected @OFF+LEN, got ${s}`);
  return { offsetBytes: Number(m[1]), lengthBytes: Number(m[2]) };
}

function parseMsg(w: string[]): PeerMsg {
  const [type, ...a] = w;
  switch (type) {
    case 'epoch': return { type: 'epoch', epoch: BigInt(a[0]!) };
    case 'resyncRequest': return { type: 'resyncRequest', epoch: num(a[0]!, 'e'), seqReceived: num(a[1]!, 's') };
    case 'ack': return { type: 'ack', epoch: num(a[0]!, 'e'), seq: num(a[1]!, 's') };
    case 'write': {
      const r = range(a[2]!);
      const seq = num(a[1]!, 's');
      return { type: 'write', epoch: num(a[0]!, 'e'), seq, ...r, fua: a[3] === 'fua', payload: new Uint8Array(r.lengthBytes).fill(Number(seq)) };
    }
    case 'flush': return { type: 'flush', epoch: num(a[0]!, 'e'), flushId: num(a[1]!, '#'), seq: num(a[3]!, 's') };
    case 'flushAck': return { type: 'flushAck', epoch: num(a[0]!, 'e'), flushId: num(a[1]!, '#') };
    case 'resyncData': {
      const r = range(a[2]!);
      return { type: 'resyncData', epoch: num(a[0]!, 'e'), resyncId: num(a[1]!, '#'), offsetBytes: r.offsetBytes, payload: new Uint8Array(r.lengthBytes) };
    }
    case 'resyncAck': return { type: 'resyncAck', epoch: num(a[0]!, 'e'), resyncId: num(a[1]!, '#') };
    case 'inSync': return { type: 'inSync', epoch: num(a[0]!, 'e'), seq: num(a[1]!, 's') };
    case 'writeStatus': return { type: 'writeStatus', epoch: num(a[0]!, 'e'), seq: num(a[1]!, 's'), sense: senseOf(a.slice(2).join(' '), 0x3, 0x0c) };
    default: throw new Error(`unknown message ${type}`);
  }
}

const json = (v: unknown): string => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? Number(x) : x));

/** Runs the commands of one scenario file; returns each command's output lines. */
export function runScenario(cases: readonly Case[]): { command: string; output: string[] }[] {
  let t: Script<Role & { status(): unknown }> | undefined;
  const results: { command: string; output: string[] }[] = [];
  const script = (): Script<Role & { status(): unknown }> => {
    if (t === undefined) throw new Error('start a role first (primary, mirror or relay)');
    return t;
  };
  const start = (role: Role & { status(): unknown }): string[] => {
    t = new Script(role);
    return t.step({ type: 'start', recovered: { meta: { epoch: 1n, seqReserved: 1n }, cacheEntries: [], dirtyRegions: new Map() } });
  };
  for (const c of cases) {
    const [cmd, ...args] = c.command.split(/\s+/);
    let output: string[];
    switch (cmd) {
      case 'primary': {
        const o = opts(args);
        output = start(new Primary({ self: 'local', volumeBytes: 16 * 1024, blockBytes, mirrors: (o.mirrors ?? '').split(',').filter(Boolean), onMirrorLoss: o.policy === 'block' ? 'block' : 'degrade', limits: testLimits, ...(o.standby ? { standby: o.standby } : {}) }));
        break;
      }
      case 'mirror':
        output = start(new Mirror({ self: 'east', volumeBytes: 16 * 1024, blockBytes, limits: testLimits }));
        break;
      case 'relay': {
        const o = opts(args);
        output = start(new Relay({ self: 'r1', downstream: o.downstream ?? 'r2', volumeBytes: 16 * 1024, blockBytes, ackMode: o.ack === 'end-to-end' ? 'end-to-end' : 'cached', storage: o.storage === 'true', limits: testLimits }));
        break;
      }
      case 'peerUp':
      case 'peerDown':
        output = script().step({ type: cmd, peer: args[0]! });
        break;
      case 'heard':
        output = script().step({ type: 'peerHeard', peer: args[0]!, epoch: num(args[1]!, 'e'), lastSeq: num(args[2]!, 's') });
        break;
      case 'tick':
        output = script().tick(Number(args[0]));
        break;
      case 'hostWrite': {
        const r = range(args[1]!);
        const id = Number(num(args[0]!, '#'));
        const ev: CoreEvent = { type: 'hostWrite', id, ...r, fua: args[2] === 'fua', payload: new Uint8Array(r.lengthBytes).fill(id) };
        output = script().step(ev);
        break;
      }
      case 'hostFlush':
        output = script().step({ type: 'hostFlush', id: Number(num(args[0]!, '#')) });
        break;
      case 'recv':
        output = script().recv(args[0]!, parseMsg(args.slice(1)));
        break;
      case 'done': {
        const failAt = args.indexOf('fail');
        const prefix = (failAt < 0 ? args : args.slice(0, failAt)).join(' ');
        output = script().done(prefix, failAt < 0 ? {} : { sense: senseOf(args.slice(failAt + 1).join(' '), 0x3, 0x0c) });
        break;
      }
      case 'status':
        output = [json(script().role.status())];
        break;
      case 'open':
        output = script().openActions();
        break;
      default:
        throw new Error(`line ${c.line}: unknown command ${cmd}`);
    }
    results.push({ command: c.command, output });
  }
  return results;
}

export function loadScenario(path: string): { text: string; cases: Case[] } {
  const text = readFileSync(path, 'utf8');
  return { text, cases: parseScenario(text) };
}
