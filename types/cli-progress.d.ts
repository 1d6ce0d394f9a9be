// Minimal typings for cli-progress 3.12 (the package ships none and @types is not installed):
// only what geomirror uses (SingleBar with a payload, the classic presets).
declare module 'cli-progress' {
  export interface Options {
    format?: string;
    stream?: NodeJS.WritableStream;
    hideCursor?: boolean;
    clearOnComplete?: boolean;
    stopOnComplete?: boolean;
    fps?: number;
    barsize?: number;
    noTTYOutput?: boolean;
  }
  export interface Preset {
    barCompleteChar: string;
    barIncompleteChar: string;
    format?: string;
  }
  export class SingleBar {
    constructor(options: Options, preset?: Preset);
    start(total: number, startValue: number, payload?: Record<string, unknown>): void;
    update(current: number, payload?: Record<string, unknown>): void;
    increment(step?: number, payload?: Record<string, unknown>): void;
    setTotal(total: number): void;
    stop(): void;
  }
  export const Presets: { legacy: Preset; shades_classic: Preset; shades_grey: Preset; rect: Preset };
  const cliProgress: { SingleBar: typeof SingleBar; Presets: typeof Presets };
  export default cliProgress;
}
