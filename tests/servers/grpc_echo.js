// A gRPC server and client for the tests, on Node's @grpc/grpc-js alone (pure JavaScript over
// Node's own http2 module, i.e. nghttp2: another HTTP/2 and HPACK stack than grpcio's C core):
// no protobuf, no generated code. Messages are raw bytes (identity serializers on both sides),
// so the wire is plain gRPC framing over cleartext HTTP/2 (h2c with prior knowledge).
//
// The same service as grpc_echo.py, `apm.test.Echo`, one method per outcome the agent must
// tell apart:
// - Say:     answers the request bytes (status OK).
// - Missing: fails with NOT_FOUND before any message: grpc-js sends a trailers-only response
//            (one HEADERS frame with :status 200, grpc-status and END_STREAM; no DATA).
// - Boom:    the handler fails with a plain Error: grpc-js answers UNKNOWN.
// - Slow:    waits 50 ms, then answers (OK) how many Slow calls were in flight when it
//            began, so that the client can prove its calls overlapped on the connection.
//
// Usage (@grpc/grpc-js found through NODE_PATH, see tests/src/grpc.rs):
//   node grpc_echo.js serve --port P
//       Listens on 127.0.0.1:P (insecure), prints "ready port=P" once it accepts
//       connections, serves until killed.
//   node grpc_echo.js call --port P [--say N] [--missing N] [--boom N] [--slow N] [--concurrent]
//       ONE client (one channel, one HTTP/2 connection to 127.0.0.1:P): the Say, Missing
//       and Boom calls one after the other, then the Slow calls (all issued before any is
//       awaited with --concurrent, so their streams are in flight together). Checks every
//       status, prints one summary line, closes the client, exits 0; exits 1 (and says why
//       on stderr) when a call did not end as expected.
//
// The agent names each process by its OTEL_SERVICE_NAME (the tests set one per process).
'use strict';

const grpc = require('@grpc/grpc-js');

const SERVICE = 'apm.test.Echo';
const SLOW_MS = 50;
const DEADLINE_MS = 10000;
// What each method must end with, as seen by the client.
const EXPECTED = {
  Say: grpc.status.OK,
  Missing: grpc.status.NOT_FOUND,
  Boom: grpc.status.UNKNOWN,
  Slow: grpc.status.OK,
};
// No proxy from the environment, no retries: exactly one HTTP/2 stream per call, straight to
// the server. A local subchannel pool: this client's connection is its own.
const CHANNEL_OPTIONS = {
  'grpc.enable_http_proxy': 0,
  'grpc.enable_retries': 0,
  'grpc.use_local_subchannel_pool': 1,
};

const identity = (b) => b;
const DEFINITION = Object.fromEntries(
  Object.keys(EXPECTED).map((name) => [
    name,
    {
      path: `/${SERVICE}/${name}`,
      requestStream: false,
      responseStream: false,
      requestSerialize: identity,
      requestDeserialize: identity,
      responseSerialize: identity,
      responseDeserialize: identity,
    },
  ]),
);
const STATUS_NAME = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));

function serve(port) {
  let inFlight = 0;
  const handlers = {
    Say: (call, callback) => callback(null, call.request),
    // No message and no initial metadata sent: only trailers go out.
    Missing: (call, callback) =>
      callback({ code: grpc.status.NOT_FOUND, details: 'no such thing' }),
    Boom: (call, callback) => callback(new Error('boom')),
    Slow: (call, callback) => {
      inFlight += 1;
      const seen = inFlight;
      setTimeout(() => {
        inFlight -= 1;
        callback(null, Buffer.from(String(seen)));
      }, SLOW_MS);
    },
  };
  const server = new grpc.Server();
  server.addService(DEFINITION, handlers);
  server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err) => {
    if (err) {
      console.error(`cannot bind 127.0.0.1:${port}: ${err.message}`);
      process.exit(1);
    }
    process.stdout.write(`ready port=${port}\n`);
  });
}

// {code, response} of one call, never rejecting.
function invoke(client, method, payload) {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](payload, { deadline }, (err, response) => {
      resolve(err ? { code: err.code, response: null } : { code: grpc.status.OK, response });
    });
  });
}

async function call(args) {
  const failures = [];
  const Client = grpc.makeGenericClientConstructor(DEFINITION, 'Echo');
  const client = new Client(
    `127.0.0.1:${args.port}`,
    grpc.credentials.createInsecure(),
    CHANNEL_OPTIONS,
  );
  await new Promise((resolve, reject) =>
    client.waitForReady(new Date(Date.now() + DEADLINE_MS), (err) =>
      err ? reject(err) : resolve(),
    ),
  );

  const check = (method, i, { code, response }, payload) => {
    if (code !== EXPECTED[method]) {
      failures.push(
        `${method} #${i}: ${STATUS_NAME[code]}, want ${STATUS_NAME[EXPECTED[method]]}`,
      );
    } else if (method === 'Say' && !response.equals(payload)) {
      failures.push(`Say #${i}: echoed ${response}, sent ${payload}`);
    }
  };

  for (const [method, n] of [
    ['Say', args.say],
    ['Missing', args.missing],
    ['Boom', args.boom],
  ]) {
    for (let i = 0; i < n; i++) {
      const payload = Buffer.from(`${method.toLowerCase()}-${i}`);
      check(method, i, await invoke(client, method, payload), payload);
    }
  }

  const slow = Buffer.from('slow');
  const start = process.hrtime.bigint();
  let results = [];
  if (args.concurrent) {
    // Every call issued before any is awaited: streams in flight together.
    results = await Promise.all(
      Array.from({ length: args.slow }, () => invoke(client, 'Slow', slow)),
    );
  } else {
    for (let i = 0; i < args.slow; i++) {
      results.push(await invoke(client, 'Slow', slow));
    }
  }
  const slowMs = Number(process.hrtime.bigint() - start) / 1e6;
  let overlap = 0;
  results.forEach((r, i) => {
    check('Slow', i, r, slow);
    if (r.response !== null) {
      overlap = Math.max(overlap, Number(r.response.toString()));
    }
  });
  if (args.concurrent && args.slow > 1 && overlap < 2) {
    failures.push(`the ${args.slow} Slow calls never overlapped at the server`);
  }
  client.close();
  if (failures.length > 0) {
    console.error(failures.join('\n'));
    process.exit(1);
  }
  process.stdout.write(
    `ok say=${args.say} missing=${args.missing} boom=${args.boom} slow=${args.slow}` +
      ` concurrent=${args.concurrent ? 1 : 0} slow_max_in_flight=${overlap}` +
      ` slow_wall_ms=${Math.round(slowMs)}\n`,
  );
}

function usage(message) {
  console.error(`${message}\nusage: grpc_echo.js serve|call --port P [options]`);
  process.exit(2);
}

function parseArgs(argv) {
  const [command, ...rest] = argv;
  if (command !== 'serve' && command !== 'call') {
    usage(`unknown command ${command}`);
  }
  const args = { command, port: 0, say: 0, missing: 0, boom: 0, slow: 0, concurrent: false };
  const counts = command === 'call' ? ['say', 'missing', 'boom', 'slow'] : [];
  for (let i = 0; i < rest.length; i++) {
    const key = rest[i].replace(/^--/, '');
    if (key === 'concurrent' && command === 'call') {
      args.concurrent = true;
    } else if (key === 'port' || counts.includes(key)) {
      const value = Number.parseInt(rest[++i], 10);
      if (!Number.isInteger(value) || value < 0) {
        usage(`--${key} needs a number`);
      }
      args[key] = value;
    } else {
      usage(`unknown option ${rest[i]}`);
    }
  }
  if (!args.port) {
    usage('--port is required');
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
if (args.command === 'serve') {
  serve(args.port);
} else {
  call(args).catch((err) => {
    console.error(`call failed: ${err.stack || err}`);
    process.exit(1);
  });
}
