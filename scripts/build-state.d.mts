// Types of build-state.mjs for the TypeScript tests that import it.
export declare const buildConfig: string;
export declare const stampFile: string;
/** Every file whose change makes dist/ stale, absolute paths. */
export declare function buildInputs(rootDir: string): string[];
/** Why dist/ under rootDir is stale (a sentence naming the file), or undefined when it is current. */
export declare function staleReason(rootDir: string): string | undefined;
