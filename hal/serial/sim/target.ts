// Device side of the serial block protocol, over any BlockDevice as its medium (a loopback
// file in the simulator script, RAM in unit tests). It is what a microcontroller's firmware
// does (docs/SERIAL-PROTOCOL.md section 6), written as a class fed chunks that hands bytes to
// `send`, so the same target runs behind a socat pty (device-sim.ts) and behind
// @serialport/binding-mock (test/hal/serial-faults.test.ts).
//
// SIMULATOR: never hardware. Requests are executed one at a time in arrival order.

import { SenseError, SenseKey, type BlockDevice } from '../../blockdev.js';
import { FrameParser, encodeFrame } from '../framing.js';
import { Feature, Flag, Op, type Header, decodeMessage, encodeInfo, encodeMessage, headerBytes, responseBit } from '../messages.js';

export interface SerialTargetOptions {
  /** Largest payload per frame this device accepts and sends (advertised in INFO). */
  payloadBytesMax?: number;
  model?: string;
}

export class SerialTarget {
  readonly payloadBytesMax: number;
  private readonly parser: FrameParser;
  private work: Promise<void> = Promise.resolve();
  /** The last response, resent without re-executing when the host retransmits (section 5.3). */
  private last: { id: number; op: number; lba: number; frame: Buffer } | undefined;
  readonly stats = { requests: 0, duplicates: 0 };

  constructor(
    private readonly medium: BlockDevice,
    private readonly send: (bytes: Buffer) => void,
    private readonly opts: SerialTargetOptions = {},
  ) {
    this.payloadBytesMax = opts.payloadBytesMax ?? 64 * 1024;
    if (this.payloadBytesMax % medium.blockSizeBytes !== 0) throw new RangeError('payloadBytesMax must be a whole number of blocks');
    // Corrupt frames are dropped silently: the host's timeout or its own CRC check recovers.
    this.parser = new FrameParser(headerBytes + this.payloadBytesMax, (body) => this.onFrame(body));
  }

  push(chunk: Uint8Array): void {
    this.parser.push(chunk);
  }

  /** Resolves when every request received so far has been answered. */
  idle(): Promise<void> {
    return this.work;
  }

  private onFrame(body: Buffer): void {
    const m = decodeMessage(body);
    if (!m || (m.header.op & responseBit) !== 0) return;
    const { header, payload } = m;
    const last = this.last;
    this.work = this.work.then(async () => {
      if (last && this.last === last && last.id === header.id && last.op === header.op && last.lba === header.lba) {
        this.stats.duplicates++;
        this.send(last.frame);
        return;
      }
      this.stats.requests++;
      const frame = encodeFrame(await this.execute(header, payload));
      this.last = { id: header.id, op: header.op, lba: header.lba, frame };
      this.send(frame);
    });
  }

  private async execute(h: Header, payload: Buffer): Promise<Buffer> {
    const reply = (status = 0, asc = 0, ascq = 0, data?: Uint8Array) =>
      encodeMessage({ op: h.op | responseBit, id: h.id, lba: h.lba, blocks: h.blocks, status, asc, ascq, flags: 0 }, data);
    const bs = this.medium.blockSizeBytes;
    try {
      switch (h.op) {
        case Op.INFO: {
          const ro = this.medium.capabilities.readOnly;
          const features = (ro ? Feature.WRITE_PROTECTED : 0) | Feature.VOLATILE_CACHE | Feature.FUA;
          return reply(0, 0, 0, encodeInfo({ blockSizeBytes: bs, blockCount: this.medium.blockCount, payloadBytesMax: this.payloadBytesMax, features, model: this.opts.model ?? 'geomirror-sim' }));
        }
        case Op.READ: {
          if (h.blocks * bs > this.payloadBytesMax) return reply(SenseKey.ILLEGAL_REQUEST, 0x24, 0);
          return reply(0, 0, 0, await this.medium.read(h.lba, h.blocks));
        }
        case Op.WRITE: {
          if (payload.length !== h.blocks * bs) return reply(SenseKey.ILLEGAL_REQUEST, 0x24, 0);
          await this.medium.write(h.lba, payload, { fua: (h.flags & Flag.FUA) !== 0 });
          if ((h.flags & Flag.FUA) !== 0) await this.medium.flush();
          return reply();
        }
        case Op.FLUSH:
          await this.medium.flush();
          return reply();
        default:
          return reply(SenseKey.ILLEGAL_REQUEST, 0x20, 0); // INVALID COMMAND OPERATION CODE
      }
    } catch (e) {
      // The medium's sense passes through unchanged; anything else is a hardware fault.
      if (e instanceof SenseError) return reply(e.key, e.asc, e.ascq);
      return reply(SenseKey.HARDWARE_ERROR, 0x44, 0);
    }
  }
}
