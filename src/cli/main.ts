// The geomirror command. Subcommands are registered by their own modules (see program.ts),
// which load a command's work only when it runs, so this file stays a table of contents.
import { buildProgram } from './program.js';

export { buildProgram };

const program = buildProgram();
await program.parseAsync(process.argv);
