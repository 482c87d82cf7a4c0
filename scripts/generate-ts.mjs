// `npm run generate` of the TypeScript packages (dashboard/, clients/typescript/): runs
// `buf generate` in the package's folder (its buf.gen.yaml) after checking that the
// googleapis protos are in place, so a missing `make proto` gets a readable message
// instead of a page of "imported file does not exist".
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../", import.meta.url));
const googleapis = `${root}gen/third_party/google/rpc/error_details.proto`;
if (!existsSync(googleapis)) {
  console.error(
    `${googleapis} is missing: run \`make proto\` at the repository root first ` +
      "(it copies google/api and google/rpc from the googleapis-common-protos wheel into gen/third_party).",
  );
  process.exit(1);
}
// npm runs a package's scripts in the package's folder.
const buf = spawnSync("buf", ["generate"], { stdio: "inherit", shell: process.platform === "win32" });
process.exit(buf.status ?? 1);
