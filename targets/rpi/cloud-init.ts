// First-boot provisioning of a flashed card: cloud-init NoCloud seed files on the boot
// partition (user-data, meta-data, network-config), as Raspberry Pi OS images based on Debian
// Trixie (from the 2025-10-02 release on) read them. The user-data installs Node from the OS
// packages if missing, unpacks the bundle that flash put on the boot partition, runs the
// bundle's install.sh (user, config, key, unit, udev rules) and enables and starts the site.
import { stringify } from 'yaml';

/** Where Raspberry Pi OS (Bookworm and later) mounts the FAT boot partition. */
export const bootMountDir = '/boot/firmware';
/** Folder on the boot partition that flash fills. */
export const bootSubdir = 'geomirror';
/** Where the bundle is unpacked on the Pi. */
export const installDir = '/opt/geomirror';
/** Where the cluster file lives on the Pi (the unit reads it from here). */
export const etcDir = '/etc/geomirror';
/** Lowest Node major the bundle runs on (package.json engines). */
export const nodeMajorMin = 20;

export interface ProvisionPlan {
  site: string;
  /** File name of the bundle inside the boot partition's geomirror/ folder. */
  bundleName: string;
  /** Key file to install, and where the cluster file expects it on the Pi (absent: inline secret). */
  key?: { name: string; destPath: string };
  /** Folder (in the boot partition's geomirror/) with ca.crt and the site's certificate and key. */
  tls?: string;
  /** Changes with every flash, so cloud-init treats a reflashed card as a new instance. */
  instanceId: string;
}

export const unitName = (site: string): string => `geomirror@${site}.service`;

export function userData(plan: ProvisionPlan): string {
  const seed = `${bootMountDir}/${bootSubdir}`;
  const nodeCheck = `command -v node >/dev/null 2>&1 && [ "$(node -p 'process.versions.node.split(".")[0]')" -ge ${nodeMajorMin} ] || { apt-get update && apt-get install -y nodejs; }`;
  const install = ['sh', `${installDir}/install.sh`, '--config', `${seed}/cluster.yaml`, '--site', plan.site];
  if (plan.key) install.push('--key', `${seed}/${plan.key.name}`, '--key-dest', plan.key.destPath);
  if (plan.key && plan.tls) install.push('--tls', `${seed}/${plan.tls}`);
  const doc = {
    hostname: plan.site,
    manage_etc_hosts: true,
    runcmd: [
      ['sh', '-c', nodeCheck],
      ['mkdir', '-p', installDir],
      ['tar', '-xzf', `${seed}/${plan.bundleName}`, '-C', installDir, '--strip-components=1'],
      install,
      ['systemctl', 'enable', '--now', unitName(plan.site)],
      // The keys now live geomirror 0600 under /etc; the FAT copies are readable by anyone holding the card.
      ...(plan.key ? [['rm', '-f', `${seed}/${plan.key.name}`]] : []),
      ...(plan.key && plan.tls ? [['rm', '-rf', `${seed}/${plan.tls}`]] : []),
    ],
  };
  return `#cloud-config\n# geomirror site ${plan.site}: written by geomirror flash\n${stringify(doc, { lineWidth: 0 })}`;
}

export function metaData(plan: ProvisionPlan): string {
  return stringify({ 'instance-id': plan.instanceId, 'local-hostname': plan.site });
}

/** Written only when the image has none: wired Ethernet by DHCP (Wi-Fi needs the operator's own). */
export function networkConfig(): string {
  return stringify({ network: { version: 2, ethernets: { eth0: { dhcp4: true, optional: true } } } });
}
