#!/usr/bin/env node
// Entry point of the `geomirror` command. The sources are TypeScript; tsx registers a
// loader so `npx geomirror` works right after `npm ci` with no build step. The Raspberry Pi
// bundle (targets/rpi) ships compiled JavaScript instead and does not go through here.
import { register } from 'tsx/esm/api';
register();
await import('../src/cli/main.ts');
