// Wrappers that spread an NbdExport must carry its callback write (writeNow, issue 18) through
// with their own meaning: a volume's window shifts it, the metered export counts its errors.
import { describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../hal/memory.js';
import { blockDeviceExport } from '../../src/nbd/blockdev-export.js';
import { NbdExportError, sliceExport, type NbdExport } from '../../src/nbd/export.js';
import { Errno } from '../../src/nbd/protocol.js';
import { meteredExport } from '../../src/site/host-export.js';
import { createSiteMetrics } from '../../src/site/metrics.js';

const block = 4096;

function withWriteNow(exp: NbdExport, fail?: NbdExportError): NbdExport {
  return { ...exp, writeNow: (o, d, opts, done) => void (fail ? setImmediate(() => done(fail)) : exp.write(o, d, opts).then(() => done(undefined), done)) };
}

const writeNow = (exp: NbdExport, o: number, d: Buffer): Promise<unknown> => new Promise((res) => exp.writeNow!(o, d, { fua: false }, res));

describe('export wrappers and writeNow', () => {
  it('a volume window (sliceExport) shifts writeNow by its offset, as it shifts write', async () => {
    const dev = new MemoryDevice({ blockSizeBytes: block, blockCount: 64 });
    const whole = withWriteNow(blockDeviceExport(dev, { name: 'group' }));
    const vol = sliceExport(whole, { name: 'db', description: '', offsetBytes: 16 * block, sizeBytes: 16 * block });
    const data = Buffer.alloc(2 * block, 0x5a);
    expect(await writeNow(vol, 3 * block, data)).toBeUndefined();
    const back = await dev.read(0, 64);
    expect(back.subarray(19 * block, 21 * block).equals(data)).toBe(true);
    expect(back.subarray(0, 19 * block).every((x) => x === 0)).toBe(true);
    expect(back.subarray(21 * block).every((x) => x === 0)).toBe(true);
    // Without writeNow underneath, the window has none either (the server then uses write()).
    expect(sliceExport(blockDeviceExport(dev, { name: 'g' }), { name: 'v', description: '', offsetBytes: 0, sizeBytes: block }).writeNow).toBeUndefined();
  });

  it('the metered export counts a failed writeNow as a host write error and passes the error on', async () => {
    const m = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'demo', processMetrics: false });
    const dev = new MemoryDevice({ blockSizeBytes: block, blockCount: 8 });
    const err = new NbdExportError(Errno.EIO, 'storage said no');
    const exp = meteredExport(withWriteNow(blockDeviceExport(dev, { name: 'v' }), err), m);
    expect(await writeNow(exp, 0, Buffer.alloc(block))).toBe(err);
    const text = await m.registry.metrics();
    expect(text).toMatch(/geomirror_host_io_errors_total\{[^}]*op="write"[^}]*\} 1/);
  });
});
