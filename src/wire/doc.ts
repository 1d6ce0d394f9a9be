// Renders the tables of docs/PROTOCOL.md from the layout specs, so the doc cannot drift from
// the code: test/conformance/doc.test.ts fails if the doc's generated regions differ from this
// output, and `node --import tsx test/conformance/gen.ts` rewrites them.
import { errorCodeDocs, ErrorCode } from './errors.js';
import * as F from './frames.js';
import { fieldBytes, type BuiltStruct } from './layout.js';

const hex2 = (n: number) => `0x${n.toString(16).padStart(2, '0').toUpperCase()}`;

function structTable(s: BuiltStruct, tail: readonly F.TailSpec[] = []): string {
  const rows = ['| Offset | Bytes | Field | Type | Meaning |', '|---:|---:|---|---|---|'];
  for (const fl of s.fields) {
    rows.push(`| ${s.offsetOf(fl.name)} | ${fieldBytes[fl.type]} | ${fl.name} | ${fl.type} | ${fl.doc} |`);
  }
  let first = true;
  for (const t of tail) {
    rows.push(`| ${first ? s.spanBytes : '..'} | var | ${t.name} | ${t.kind} | ${t.doc} |`);
    first = false;
  }
  return rows.join('\n');
}

export function renderSections(): Map<string, string> {
  const out = new Map<string, string>();
  out.set('limits', [
    '| Name | Value | Meaning |',
    '|---|---:|---|',
    `| headerBytes | ${F.headerBytes} | fixed header size |`,
    `| frameBytesMax | ${F.frameBytesMax} | largest frame (header + body) a receiver accepts |`,
    `| payloadBytesMax | ${F.payloadBytesMax} | largest data of one WRITE or RESYNC_DATA |`,
    `| nameBytesMax | ${F.nameBytesMax} | longest cluster or site name (UTF-8 bytes) |`,
    `| reasonBytesMax | ${F.reasonBytesMax} | longest REFUSE/ERROR reason or STATUS value |`,
    `| statusEntriesMax | ${F.statusEntriesMax} | most entries in one STATUS_REPLY |`,
    `| resyncRangesMax | ${F.resyncRangesMax} | most ranges in one RESYNC_REQUEST |`,
    `| inflightWritesMax | ${F.inflightWritesMax} | most unacknowledged WRITEs per link and direction |`,
    `| inflightBytesMax | ${F.inflightBytesMax} | most unacknowledged WRITE data bytes per link and direction |`,
    `| nonceBytes | ${F.nonceBytes} | handshake nonce size |`,
    `| macBytes | ${F.macBytes} | HMAC-SHA256 size |`,
  ].join('\n'));
  out.set('header', structTable(F.headerStruct));
  const types = ['| Code | Name | Phase | Body bytes (min..max) | Meaning |', '|---|---|---|---|---|'];
  for (const s of F.messageSpecs) types.push(`| ${hex2(s.code)} | ${s.name} | ${s.phase} | ${s.bodyBytesMin}..${s.bodyBytesMax} | ${s.doc} |`);
  out.set('types', types.join('\n'));
  const flowDoc: Record<F.MessageFlow, string> = {
    down: 'only from the receiver\'s upstream (a primary or standby that lists it, the relay that forwards to it)',
    up: 'only from the receiver\'s downstream (a site the receiver lists or forwards to)',
    both: 'either way between an upstream and its downstream',
    any: 'from any authenticated site of the cluster',
  };
  const flows = ['| Flow | Messages | Accepted |', '|---|---|---|'];
  for (const flow of ['down', 'up', 'both', 'any'] as const) {
    const names = F.messageSpecs.filter((s) => s.phase === 'data' && F.messageFlow[s.name] === flow).map((s) => s.name);
    flows.push(`| ${flow} | ${names.join(', ')} | ${flowDoc[flow]} |`);
  }
  out.set('flow', flows.join('\n'));
  const tails = ['| Kind | Encoding |', '|---|---|'];
  for (const [k, v] of Object.entries(F.tailKindDocs)) tails.push(`| ${k} | ${v.layout} |`);
  out.set('tails', tails.join('\n'));
  const msgs: string[] = [];
  for (const s of F.messageSpecs) {
    msgs.push(`### ${s.name} (${hex2(s.code)})`, '', s.doc, '', structTable(s.fixed, s.tail), '');
  }
  out.set('messages', msgs.join('\n').trimEnd());
  const errs = ['| Code | Name | Meaning |', '|---:|---|---|'];
  for (const [name, code] of Object.entries(ErrorCode)) errs.push(`| ${code} | ${name} | ${errorCodeDocs[code]} |`);
  out.set('errors', errs.join('\n'));
  return out;
}

const region = /<!-- BEGIN GENERATED: ([a-z-]+) -->\n([\s\S]*?)<!-- END GENERATED: \1 -->/g;

/** The generated regions found in a doc, by name. */
export function generatedRegions(doc: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of doc.matchAll(region)) out.set(m[1]!, m[2]!.trimEnd());
  return out;
}

/** The doc with every generated region replaced by the current rendering. */
export function regenerate(doc: string): string {
  const sections = renderSections();
  return doc.replace(region, (_all, name: string) => {
    const body = sections.get(name);
    if (body === undefined) throw new Error(`docs/PROTOCOL.md names an unknown generated region '${name}'`);
    return `<!-- BEGIN GENERATED: ${name} -->\n${body}\n<!-- END GENERATED: ${name} -->`;
  });
}
