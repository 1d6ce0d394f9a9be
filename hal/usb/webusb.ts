// The slice of the `usb` package's device object that the adapter uses, written down so the
// simulator (sim/target.ts) can have exactly the same shape and nothing more.
//
// Why usb 3.x (WebUSB-style) and not 2.x (legacy libusb API): 3.x is a napi-rs rewrite over
// the Rust `nusb` crate, so it needs no libusb or libudev on the Raspberry Pi, ships
// per-platform prebuilt binaries (linux-arm64 and armv7 included) instead of compiling on
// install, and its promise API (transferIn/Out with a per-call timeout, clearHalt,
// controlTransferOut, detachKernelDriver on Linux) is all Bulk-Only Transport needs.

export type Direction = 'in' | 'out';
export type TransferStatus = 'ok' | 'stall' | 'babble';

export interface EndpointInfo {
  endpointNumber: number;
  direction: Direction;
  type: 'bulk' | 'interrupt' | 'isochronous';
  packetSize: number;
}

export interface InterfaceInfo {
  interfaceNumber: number;
  claimed: boolean;
  alternate: {
    alternateSetting: number;
    interfaceClass: number;
    interfaceSubclass: number;
    interfaceProtocol: number;
    endpoints: EndpointInfo[];
  };
}

export interface ConfigurationInfo {
  configurationValue: number;
  interfaces: InterfaceInfo[];
}

export interface ControlSetup {
  requestType: 'standard' | 'class' | 'vendor';
  recipient: 'device' | 'interface' | 'endpoint' | 'other';
  request: number;
  value: number;
  index: number;
}

/** Structural subset of `usb`'s UsbDevice (WebUSB USBDevice plus the Linux driver calls). */
export interface UsbDeviceLike {
  readonly vendorId: number;
  readonly productId: number;
  readonly manufacturerName?: string | null;
  readonly productName?: string | null;
  readonly serialNumber?: string | null;
  readonly opened: boolean;
  readonly configuration: ConfigurationInfo | null | undefined;
  open(): Promise<void>;
  close(): Promise<void>;
  selectConfiguration(configurationValue: number): Promise<void>;
  claimInterface(interfaceNumber: number): Promise<void>;
  releaseInterface(interfaceNumber: number): Promise<void>;
  transferIn(endpointNumber: number, length: number, timeoutMs?: number): Promise<{ data?: DataView | undefined; status: TransferStatus }>;
  transferOut(endpointNumber: number, data: Uint8Array, timeoutMs?: number): Promise<{ bytesWritten: number; status: TransferStatus }>;
  controlTransferOut(setup: ControlSetup, data?: Uint8Array, timeoutMs?: number): Promise<{ bytesWritten: number; status: TransferStatus }>;
  clearHalt(direction: Direction, endpointNumber: number): Promise<void>;
  detachKernelDriver?(interfaceNumber: number): Promise<void>;
  attachKernelDriver?(interfaceNumber: number): Promise<void>;
}

/** Mass Storage class codes (USB MSC overview 1.4): SCSI transparent command set over BOT. */
export const MassStorage = { CLASS: 0x08, SUBCLASS_SCSI: 0x06, PROTOCOL_BOT: 0x50 } as const;

export function hex4(n: number): string {
  return n.toString(16).padStart(4, '0');
}
