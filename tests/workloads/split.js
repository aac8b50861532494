// Profiler test workload for JIT code: burns CPU in two JavaScript functions with a known
// split, 3/4 of the work in hotAlpha and 1/4 in hotBeta, for SECONDS of wall time, then
// prints the CPU seconds used and the CPU seconds spent in each of the two (as measured by
// process.cpuUsage around each call).
//
// Run under `node --perf-basic-prof --no-turbo-inlining split.js SECONDS`: V8 then writes
// /tmp/perf-<pid>.map, and the two functions stay frames of their own.
'use strict';

const UNIT = 200000;
let sink = 0;

function hotAlpha(n) {
  let x = 0;
  for (let i = 0; i < n; i++) x += (i * i) % 7;
  return x;
}

function hotBeta(n) {
  let y = 1;
  for (let i = 0; i < n; i++) y += (i * i) % 7;
  return y;
}

function cpuSeconds(u) {
  return (u.user + u.system) / 1e6;
}

function main(seconds) {
  const until = Date.now() + seconds * 1000;
  let inAlpha = 0;
  let inBeta = 0;
  while (Date.now() < until) {
    const t0 = process.cpuUsage();
    sink += hotAlpha(3 * UNIT);
    const t1 = process.cpuUsage();
    sink += hotBeta(UNIT);
    const t2 = process.cpuUsage();
    inAlpha += cpuSeconds(t1) - cpuSeconds(t0);
    inBeta += cpuSeconds(t2) - cpuSeconds(t1);
  }
  const cpu = cpuSeconds(process.cpuUsage());
  console.log(`${cpu.toFixed(3)} ${sink & 1} ${inAlpha.toFixed(3)} ${inBeta.toFixed(3)}`);
}

main(Number(process.argv[2] || '5'));
