// The one way the config tests ask for refusals: the messages of every problem the loader names.
import { expect } from 'vitest';
import { ConfigError, parseConfig } from '../../src/site/config.js';

/** The problems `text` (a cluster file at `file`) is refused with; fails the test if it loads. */
export function configProblems(text: string, file: string): string[] {
  try {
    parseConfig(text, file);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems.map((p) => p.message);
  }
  throw new Error('expected the config to be refused');
}
