// `geomirror pki ...`: the cluster's CA and certificates (src/site/pki.ts, issue 17 item 1).
//   pki init                          the CA and every site's certificate that is missing
//   pki issue --site NAME [--force]   issue (or renew) one site's certificate
//   pki client --name NAME [--out D]  a client certificate (CLI elsewhere, Prometheus, an NBD host)
//   pki roll-ca --start | --finish    replace the CA without stopping the cluster
//   pki show                          what is there and until when
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import type { Command } from 'commander';
import type { ClusterConfig } from '../site/config.js';
import type { CreatedFile } from '../site/pki.js';
import { defaultClusterFile } from './defaults.js';

function report(files: CreatedFile[]): void {
  for (const f of files) process.stdout.write(`wrote ${f.what}: ${f.path}\n`);
}

type Pki = typeof import('../site/pki.js');

/**
 * Runs one pki command on the cluster file; a failure is one line and exit code 1. The config
 * loader and the PKI (X.509) are loaded here, when a command runs: `geomirror --help` must not
 * pay for them (issue 19).
 */
async function withConfig(file: string, fn: (config: ClusterConfig, pki: Pki) => Promise<void>): Promise<void> {
  const [{ ConfigError, loadConfig }, pki] = await Promise.all([import('../site/config.js'), import('../site/pki.js')]);
  try {
    await fn(loadConfig(file), pki);
  } catch (e) {
    process.stderr.write(`geomirror pki: ${e instanceof ConfigError ? e.message : (e as Error).message}\n`);
    process.exitCode = 1;
  }
}

export function registerPki(program: Command): void {
  const pki = program
    .command('pki')
    .description('the cluster CA and its site and client certificates (mutual TLS between sites, HTTPS admin, NBD TLS)')
    .addHelpText(
      'after',
      `
Examples:
  $ geomirror pki init --config cluster.yaml                 # CA + every missing site certificate
  $ geomirror pki issue --config cluster.yaml --site east --force   # renew east's certificate
  $ geomirror pki client --config cluster.yaml --name backup-host   # for nbdinfo/qemu over TLS
  $ geomirror pki roll-ca --config cluster.yaml --start

Files (beside the secret: file unless tls: in the cluster file moves them): ca.crt (trusted
CAs), ca.key (the CA key: keep it where you run pki, not on sites), site-NAME.crt and
site-NAME.key (each site needs ca.crt and its own pair). Rotation: docs/OPERATIONS.md.`,
    );
  const cfg = (c: Command) => c.option('-c, --config <file>', 'the cluster file', defaultClusterFile);

  cfg(pki.command('init').description('create the CA (if missing) and every site certificate that is missing')).action(async (o: { config: string }) =>
    withConfig(o.config, async (config, { preparePki }) => {
      if (config.transport === 'insecure') process.stderr.write('note: this cluster runs transport: insecure; the certificates are used once you remove that key\n');
      const { created } = await preparePki({ ...config, transport: 'tls' });
      if (created.length === 0) process.stdout.write(`nothing to do: the CA and every site certificate exist under ${config.tls.dir}\n`);
      report(created);
    }),
  );

  cfg(pki.command('issue').description('issue a site certificate, or renew it with --force (the running site uses it from its next connection)'))
    .requiredOption('-s, --site <name>', 'the site')
    .option('-f, --force', 'replace an existing key and certificate (renewal)')
    .option('--days <n>', 'validity in days', '365')
    .action(async (o: { config: string; site: string; force?: boolean; days: string }) =>
      withConfig(o.config, async (config, { issueSiteCert }) => report(await issueSiteCert(config, o.site, { force: o.force === true, validDays: Number(o.days) }))),
    );

  cfg(pki.command('client').description('issue a client certificate (ca-cert.pem, client-cert.pem, client-key.pem: the layout nbdinfo tls-certificates= and qemu tls-creds-x509 read)'))
    .requiredOption('-n, --name <name>', 'the client (its certificate CN; use it in nbd-tls allow lists)')
    .option('-o, --out <dir>', 'folder to write (default: client-NAME beside the CA)')
    .option('-f, --force', 'replace existing files')
    .option('--days <n>', 'validity in days', '365')
    .action(async (o: { config: string; name: string; out?: string; force?: boolean; days: string }) =>
      withConfig(o.config, async (config, { clientCertDir, issueClientCert }) => report(await issueClientCert(config, o.name, o.out ?? clientCertDir(config, o.name), { force: o.force === true, validDays: Number(o.days) }))),
    );

  cfg(pki.command('roll-ca').description('replace the CA without stopping the cluster: --start (trust old + new), re-issue every site, --finish (trust only the new)'))
    .option('--start', 'make the new CA; ca.crt holds new + old')
    .option('--finish', 'ca.crt holds only the new CA; the old key is removed')
    .option('-f, --force', 'finish even though some site certificates are still from the old CA')
    .action(async (o: { config: string; start?: boolean; finish?: boolean; force?: boolean }) =>
      withConfig(o.config, async (config, { rollCa }) => {
        if (o.start === o.finish) throw new Error('give --start or --finish');
        report(await rollCa(config, o.start ? 'start' : 'finish', o.force === true));
        if (o.start) process.stdout.write(`next: copy ${config.tls.caCert} to every site, then for each site: geomirror pki issue --config ${config.file} --site NAME --force (and copy its pair), then: geomirror pki roll-ca --finish\n`);
      }),
    );

  cfg(pki.command('new-ca').description('create a CA for a new cluster (refuses to replace one: use roll-ca)')).action(async (o: { config: string }) =>
    withConfig(o.config, async (config, { createCa }) => report(await createCa(config))),
  );

  cfg(pki.command('show').description('list the CA(s) and site certificates with their expiry')).action(async (o: { config: string }) =>
    withConfig(o.config, async (config, { siteCertFiles, splitPem }) => {
      const line = (what: string, path: string): void => {
        if (!existsSync(path)) return void process.stdout.write(`${what.padEnd(16)} missing (${path})\n`);
        for (const pem of splitPem(readFileSync(path, 'utf8'))) {
          const c = new X509Certificate(pem);
          process.stdout.write(`${what.padEnd(16)} ${c.subject.replace(/\n/g, ', ')}  valid until ${new Date(c.validTo).toISOString()}  (${path})\n`);
        }
      };
      line('CA', config.tls.caCert);
      for (const s of config.siteNames) line(`site ${s}`, siteCertFiles(config, s).cert);
    }),
  );
}
