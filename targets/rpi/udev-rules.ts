// `node /opt/geomirror/lib/targets/rpi/udev-rules.js CONFIG SITE`: prints the udev rules for
// one site of a cluster file (install.sh writes them to /etc/udev/rules.d/60-geomirror.rules).
import { ConfigError, loadConfig } from '../../src/site/config.js';
import { udevRules } from './udev.js';

const [configFile, site] = process.argv.slice(2);
if (!configFile || !site) {
  process.stderr.write('usage: udev-rules.js CLUSTER.yaml SITE\n');
  process.exit(2);
}
try {
  const config = loadConfig(configFile);
  const s = config.sites[site];
  if (!s) {
    process.stderr.write(`site "${site}" is not in ${config.file}; its sites are: ${config.siteNames.join(', ')}\n`);
    process.exit(1);
  }
  process.stdout.write(udevRules(s));
} catch (err) {
  process.stderr.write(`${err instanceof ConfigError ? err.message : String(err)}\n`);
  process.exit(1);
}
