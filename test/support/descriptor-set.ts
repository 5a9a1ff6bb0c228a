// A descriptor set as `buf build -o functions.binpb` writes it, made from
// generated code in process, for tests of remote function types.
import { create, type DescFile, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";

/** The binary FileDescriptorSet of `file` and everything it imports, imports first. */
export function descriptorSetOf(file: DescFile): Uint8Array {
  const files: DescFile[] = [];
  const add = (f: DescFile) => {
    if (files.includes(f)) return;
    for (const d of f.dependencies) add(d);
    files.push(f);
  };
  add(file);
  return toBinary(FileDescriptorSetSchema, create(FileDescriptorSetSchema, { file: files.map((f) => f.proto) }));
}
