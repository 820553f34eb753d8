// tests/deploy/validate.mjs <rendered.yaml>...: validates every object that `kubectl kustomize`
// rendered against the Kubernetes API schema, offline.
//
// Two checks per object:
//   1. kubernetes-models (npm, pinned in package-lock.json): JSON schemas generated from the
//      Kubernetes OpenAPI specification, compiled with ajv; types, required fields, enums and
//      formats. Like kubeconform without -strict, it accepts fields that do not exist.
//   2. strict: every field must exist in the API. The same package's type declarations (.d.ts,
//      generated from the same OpenAPI) name every field of every object; a misspelt field
//      (`imagePullPolice`), or one at the wrong level, fails here, as `kubectl --validate=strict`
//      would fail it against a server.
// Prints one line per object and "N passed, N failed" last. `--self-test` first checks that both
// checks reject broken objects (so that a validator that accepts everything cannot pass).
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { parseAllDocuments } from 'yaml';

const require = createRequire(import.meta.url);
const MODELS = path.dirname(require.resolve('kubernetes-models/package.json'));
const APIMACHINERY = path.dirname(require.resolve('@kubernetes-models/apimachinery/package.json'));

// apiVersion "apps/v1" -> kubernetes-models/apps/v1/<Kind>.js; "v1" -> kubernetes-models/v1/.
function modelFile(apiVersion, kind) { return path.join(MODELS, apiVersion, `${kind}.js`); }

// ---- the strict check: a small parser of the generated .d.ts declarations ----

const declCache = new Map();
function declarations(file) { // { imports: {name: file}, interfaces: {name: bodyText}, aliases: {alias: name} }
  if (declCache.has(file)) return declCache.get(file);
  const text = fs.readFileSync(file, 'utf8').replace(/\/\*[\s\S]*?\*\//g, '');
  const d = { file, imports: {}, interfaces: {}, aliases: {} };
  for (const m of text.matchAll(/import \{ ([^}]+) \} from "([^"]+)";/g)) {
    for (const name of m[1].split(',').map((s) => s.trim())) d.imports[name] = m[2];
  }
  for (const m of text.matchAll(/export type \{ (\w+) as (\w+)/g)) d.aliases[m[2]] = m[1];
  const re = /export interface (\w+)(?: extends [\w, ]+)? \{/g;
  let m;
  while ((m = re.exec(text)) !== null) {
    let depth = 1, i = re.lastIndex;
    for (; i < text.length && depth > 0; i++) { if (text[i] === '{') depth++; else if (text[i] === '}') depth--; }
    d.interfaces[m[1]] = text.slice(re.lastIndex, i - 1);
  }
  declCache.set(file, d);
  return d;
}

function resolveImport(fromFile, spec) {
  if (spec.startsWith('.')) return path.resolve(path.dirname(fromFile), spec.replace(/\.js$/, '.d.ts'));
  if (spec.startsWith('@kubernetes-models/apimachinery/')) return path.join(APIMACHINERY, spec.slice('@kubernetes-models/apimachinery/'.length) + '.d.ts');
  return null; // @kubernetes-models/base: TypeMeta and the like
}

// A type as a tree: {kind:'object', fields:{name:type}} | {kind:'array', of} | {kind:'map'} | {kind:'any'}.
function parseType(src, d) {
  let s = src.trim();
  if (s.startsWith('Array<') && s.endsWith('>')) return { kind: 'array', of: parseType(s.slice(6, -1), d) };
  if (s.startsWith('{')) {
    const body = s.slice(1, -1);
    if (/^\s*\[key: string\]/.test(body)) return { kind: 'map' };
    return { kind: 'object', fields: parseFields(body, d) };
  }
  if (/^I\w+$/.test(s)) return { kind: 'ref', name: s, d };
  return { kind: 'any' }; // string, number, boolean, unions of literals, IntOrString
}

function parseFields(body, d) {
  const fields = {};
  let i = 0;
  while (i < body.length) {
    const m = /^\s*"([^"]+)"\??: /.exec(body.slice(i));
    if (!m) { i++; continue; }
    i += m[0].length;
    let depth = 0, j = i;
    for (; j < body.length; j++) {
      const c = body[j];
      if (c === '{' || c === '<' || c === '(') depth++;
      else if (c === '}' || c === '>' || c === ')') depth--;
      else if (c === ';' && depth === 0) break;
    }
    fields[m[1]] = parseType(body.slice(i, j), d);
    i = j + 1;
  }
  return fields;
}

function deref(t) {
  if (t.kind !== 'ref') return t;
  const d = t.d;
  let file = d.file, name = t.name;
  if (!d.interfaces[name]) {
    const spec = d.imports[name];
    if (!spec) return { kind: 'any' };
    file = resolveImport(d.file, spec);
    if (!file || !fs.existsSync(file)) return { kind: 'any' };
  }
  const target = declarations(file);
  name = target.aliases[name] || name;
  if (!target.interfaces[name]) return { kind: 'any' };
  return { kind: 'object', fields: parseFields(target.interfaces[name], target) };
}

function strict(value, type, where, problems) {
  type = deref(type);
  if (value === null || value === undefined) return;
  if (type.kind === 'array' && Array.isArray(value)) value.forEach((v, k) => strict(v, type.of, `${where}[${k}]`, problems));
  else if (type.kind === 'object' && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) {
      if (!(k in type.fields)) problems.push(`${where}.${k}: no such field`);
      else strict(v, type.fields[k], `${where}.${k}`, problems);
    }
  }
}

// ---- both checks on one object ----

async function validate(obj) {
  const problems = [];
  if (!obj || !obj.apiVersion || !obj.kind) return ['not a Kubernetes object (no apiVersion or kind)'];
  const file = modelFile(obj.apiVersion, obj.kind);
  if (!fs.existsSync(file)) return [`unknown apiVersion/kind ${obj.apiVersion} ${obj.kind}`];
  const Model = (await import(file))[obj.kind];
  try { new Model(obj).validate(); } catch (e) { problems.push(`schema: ${e.message}`); }
  const d = declarations(file.replace(/\.js$/, '.d.ts'));
  const body = d.interfaces[`I${obj.kind}`];
  strict(obj, { kind: 'object', fields: { ...parseFields(body, d), apiVersion: { kind: 'any' }, kind: { kind: 'any' } } }, obj.kind, problems);
  return problems;
}

async function selfTest(objects) {
  const sts = objects.find((o) => o.kind === 'StatefulSet');
  const broken = [
    ['replicas as a string', (o) => { o.spec.replicas = 'three'; }],
    ['no selector', (o) => { delete o.spec.selector; }],
    ['a misspelt container field', (o) => { o.spec.template.spec.containers[0].imagePullPolice = 'Always'; }],
    ['a probe field at the wrong level', (o) => { o.spec.template.spec.containers[0].readinessProbe.path = '/'; }],
    ['an unknown podManagementPolicy', (o) => { o.spec.podManagementPolicy = 'Sideways'; }],
  ];
  let ok = true;
  for (const [what, breakIt] of broken) {
    const o = structuredClone(sts);
    breakIt(o);
    const problems = await validate(o);
    console.log(`${problems.length > 0 ? 'ok' : 'NOT REJECTED'} self-test: ${what}: ${problems[0] || ''}`);
    if (problems.length === 0) ok = false;
  }
  return ok;
}

let passed = 0, failed = 0;
const args = process.argv.slice(2);
const files = args.filter((a) => !a.startsWith('--'));
const objects = [];
for (const f of files) {
  for (const doc of parseAllDocuments(fs.readFileSync(f, 'utf8'))) {
    if (doc.errors.length > 0) { console.log(`FAIL ${f}: YAML: ${doc.errors[0].message}`); failed++; continue; }
    const o = doc.toJS();
    if (o) objects.push({ file: f, o });
  }
}
if (args.includes('--self-test')) { if (await selfTest(objects.map((x) => x.o))) passed++; else failed++; }
for (const { file, o } of objects) {
  const problems = await validate(o);
  const name = `${path.basename(file)} ${o.kind}/${o.metadata && o.metadata.name}`;
  if (problems.length === 0) { passed++; console.log(`ok ${name}`); } else {
    failed++;
    console.log(`FAIL ${name}`);
    for (const p of problems.slice(0, 10)) console.log(`  ${p}`);
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
