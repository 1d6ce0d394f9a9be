// The command-line entry of a bench file: when the file is the one node was asked to run, parse
// its options (a bad one: the message and exit code 2), run it and print its report.
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

export async function benchMain<O>(moduleUrl: string, name: string, parse: (argv: string[]) => O, run: (opts: O) => Promise<string>): Promise<void> {
  if (!process.argv[1] || moduleUrl !== pathToFileURL(resolve(process.argv[1])).href) return;
  let opts: O;
  try {
    opts = parse(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`bench/${name}: ${(e as Error).message}\n`);
    process.exit(2);
  }
  process.stdout.write(`\n${await run(opts)}\n`);
}
