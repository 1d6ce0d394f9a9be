// A small seeded PRNG (xoshiro128**, Blackman & Vigna 2018, seeded through splitmix32) so that
// every fault schedule replays from its seed (STYLE rule 7; TigerBeetle's VOPR). Exported for
// the simulator: same seed, same sequence, on every platform (32-bit integer math only).
//
// hal/ imports nothing from src/.

export class Prng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** `seed` is any integer (or safe number); it is spread over the 128-bit state by splitmix32. */
  constructor(seed: number) {
    if (!Number.isFinite(seed)) throw new RangeError(`PRNG seed ${seed} is not a finite number`);
    // Fold a seed wider than 32 bits into the state too, so 2^32 + 1 and 1 differ.
    let x = (seed >>> 0) ^ Math.floor(seed / 2 ** 32);
    const next = (): number => {
      x = (x + 0x9e3779b9) | 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
      z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
      return (z ^ (z >>> 15)) >>> 0;
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // the all-zero state is a fixed point
  }

  /** Next 32-bit unsigned integer. */
  u32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform float in [0, 1) with 32 bits of randomness. */
  float(): number {
    return this.u32() / 2 ** 32;
  }

  /** Uniform integer in [0, n) for 1 <= n <= 2^32 (rejection sampling, no modulo bias). */
  int(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > 2 ** 32) throw new RangeError(`Prng.int bound ${n} must be an integer in [1, 2^32]`);
    const limit = 2 ** 32 - (2 ** 32 % n);
    for (;;) {
      const r = this.u32();
      if (r < limit) return r % n;
    }
  }

  /** True with probability p (p <= 0 never, p >= 1 always, without consuming a draw). */
  chance(p: number): boolean {
    if (p <= 0) return false;
    if (p >= 1) return true;
    return this.float() < p;
  }

  /** A child generator with its own stream, e.g. one per simulated device from one run seed. */
  fork(): Prng {
    return new Prng(this.u32() * 2 ** 20 + (this.u32() >>> 12));
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
