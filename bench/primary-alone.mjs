// Bench helper: runs the primary of a cluster file with its mirror list emptied, so
// bench/compare.ts can measure geomirror's own overhead (NBD + core + cache journal + storage,
// no replication). The cluster file refuses a primary without mirrors (claim 1 needs at least
// one), which is right for users; this process is the bench's deliberate exception, kept out
// of the geomirror command. Like every site it runs the compiled JavaScript in dist/
// (`npm run bench` builds it first).
//
//   node bench/primary-alone.mjs CONFIG SITE
import { loadConfig } from '../dist/src/site/config.js';
import { runSite } from '../dist/src/site/run.js';

const [configFile, siteName] = process.argv.slice(2);
if (configFile === undefined || siteName === undefined) {
  process.stderr.write('usage: node bench/primary-alone.mjs CONFIG SITE\n');
  process.exit(2);
}
const config = loadConfig(configFile);
const site = config.sites[siteName];
if (site === undefined || site.role !== 'primary') throw new Error(`${configFile}: ${siteName} is not a primary site`);
site.mirrors = [];
const running = await runSite(config, siteName);
const stop = () => {
  running.stop().then(
    () => process.exit(0),
    () => process.exit(1),
  );
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
