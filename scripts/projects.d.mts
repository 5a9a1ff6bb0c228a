/** Folders under examples/ and bench, relative to `root`. */
export function userFolders(root: string): string[];
/** The user folders with protos to generate code from. */
export function protoFolders(root: string): string[];
/** `tsc` arguments that build every user folder with a tsconfig.json. */
export function userBuildArgs(root: string): string[];
