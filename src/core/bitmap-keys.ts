// The dirty-bitmap keys a site keeps for itself (beside one per peer, named after the peer):
// what a site loads at start. One list, so the site (src/site/replica.ts) and the simulator
// (test/sim/models.ts) load the same ones: a key a core writes but the site does not load is a
// record a restart silently forgets.
import { journaledKey, lostKey, uncoveredKey } from './repair.js';
import { localSuspectKey } from './types.js';
import { heldKey } from './upstream.js';

export const siteBitmapKeys: readonly string[] = [localSuspectKey, lostKey, journaledKey, uncoveredKey, heldKey];
