// TCP links of the replication protocol: Link (one authenticated connection), LinkServer
// (listen + accept by site name), Dialer (connect + reconnect with backoff).
export * from './clock.js';
export * from './link.js';
export * from './server.js';
export * from './dialer.js';
export * from './window.js';
export * from './security.js';
