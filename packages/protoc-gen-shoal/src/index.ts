export { protocGenShoal } from "./protoc-gen-shoal-plugin.js";
