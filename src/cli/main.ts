// The geomirror command. Subcommands are registered by the modules that implement them
// (see program.ts) so this file stays a table of contents.
import { buildProgram } from './program.js';

export { buildProgram };

const program = buildProgram();
await program.parseAsync(process.argv);
