// Parse an AsyncAPI document with the AsyncAPI project's own parser (@asyncapi/parser) and
// print its diagnostics as one JSON object: {"errors": [...], "warnings": [...]}.
// Usage: node parse.mjs DOCUMENT.json. Exit status 1 when any diagnostic is an error.
import { readFile } from "node:fs/promises";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";

const path = process.argv[2];
if (!path) {
  console.error("usage: node parse.mjs DOCUMENT.json");
  process.exit(2);
}
const { document, diagnostics } = await new Parser().parse(await readFile(path, "utf8"), { source: path });
const shown = (d) => ({ code: d.code, message: d.message, path: (d.path || []).join("/") });
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error).map(shown);
const warnings = diagnostics.filter((d) => d.severity !== DiagnosticSeverity.Error).map(shown);
if (!document && errors.length === 0) {
  errors.push({ code: "no-document", message: "the parser returned no document", path: "" });
}
console.log(JSON.stringify({ errors, warnings }));
process.exit(errors.length ? 1 : 0);
