// Builds the browser client into dist/: index.html + assets/app.[hash].js + assets/app.[hash].css.
// Run through `npm run build` (the Makefile's `web` target does it when sources change).
import * as esbuild from 'esbuild'
import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'

const outdir = 'dist'
rmSync(outdir, { recursive: true, force: true })
mkdirSync(`${outdir}/assets`, { recursive: true })

const result = await esbuild.build({
  entryPoints: { app: 'src/main.js' },
  bundle: true,
  format: 'esm',
  target: ['es2020'],
  minify: true,
  sourcemap: true,
  write: false,
  outdir: `${outdir}/assets`,
  loader: { '.css': 'css' },
  logLevel: 'warning'
})

const names = {}
for (const file of result.outputFiles) {
  const rel = file.path.slice(file.path.indexOf(`${outdir}/assets/`) + outdir.length + 1)
  writeFileSync(`${outdir}/${rel}`, file.contents)
  if (!rel.endsWith('.map')) {
    const hash = createHash('sha256').update(file.contents).digest('hex').slice(0, 10)
    names[rel.endsWith('.css') ? 'css' : 'js'] = `${rel}?v=${hash}`
  }
}
let html = readFileSync('index.html', 'utf8')
html = html.replace('%APP_JS%', names.js).replace('%APP_CSS%', names.css || '')
writeFileSync(`${outdir}/index.html`, html)
console.log('built', Object.values(names).join(' '))
